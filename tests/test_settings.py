"""Settings: the Redis URL fallbacks Vercel's Upstash integration relies on, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emailqueue import ConfigurationError, Settings, load_settings
from emailqueue._devstate import DEV_SENDER
from emailqueue._settings import redis_url_source

VARIABLES = [
    "QUEUE_REDIS_URL",
    "REDIS_URL",
    "KV_URL",
    "RESEND_API_KEY",
    "EMAIL_MAX_ATTEMPTS",
    "VERCEL_ENV",
    "EMAILQUEUE_DEV",
    "EMAIL_FROM",
    "EMAIL_QUEUE_NAME",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env, no dev state file


def test_redis_url_fallbacks_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/PLATFORM.md, "Upstash Redis": Vercel's KV integration injects REDIS_URL and KV_URL.
    monkeypatch.setenv("KV_URL", "rediss://default:t@kv.upstash.io:6379")
    assert load_settings().queue_redis_url == "rediss://default:t@kv.upstash.io:6379"
    monkeypatch.setenv("REDIS_URL", "rediss://default:t@redis.upstash.io:6379")
    assert load_settings().queue_redis_url == "rediss://default:t@redis.upstash.io:6379"
    monkeypatch.setenv("QUEUE_REDIS_URL", "redis://localhost:6379")
    assert load_settings().queue_redis_url == "redis://localhost:6379"


def test_empty_variable_does_not_hide_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_REDIS_URL", "")
    monkeypatch.setenv("REDIS_URL", "redis://fallback:6379")
    assert load_settings().queue_redis_url == "redis://fallback:6379"


def test_dotenv_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("QUEUE_REDIS_URL=redis://from-dotenv:6379\nEMAIL_MAX_ATTEMPTS=3\n")
    settings = load_settings()
    assert (settings.queue_redis_url, settings.email_max_attempts) == ("redis://from-dotenv:6379", 3)


def test_invalid_value_names_the_variable_that_supplied_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KV_URL", "http://not-redis")
    with pytest.raises(ConfigurationError, match=r"KV_URL: .*rediss://"):
        load_settings()
    monkeypatch.setenv("EMAIL_MAX_ATTEMPTS", "lots")
    with pytest.raises(ConfigurationError, match="EMAIL_MAX_ATTEMPTS"):
        load_settings()


def test_invalid_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_REDIS_URL", "http://user:sentinel-pw@host")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "sentinel-pw" not in str(info.value)


def test_missing_url_and_key_say_what_to_set() -> None:
    settings = load_settings()
    with pytest.raises(ConfigurationError, match=r"QUEUE_REDIS_URL is not set.*emailqueue dev"):
        settings.require_redis_url()
    with pytest.raises(ConfigurationError, match="RESEND_API_KEY is not set"):
        settings.require_api_key()


def test_time_budget_fits_under_max_duration() -> None:
    settings = load_settings(drain_max_duration_s=60)
    assert settings.time_budget_s == 50
    assert load_settings(drain_max_duration_s=10).time_budget_s == 5
    assert load_settings(drain_time_budget_s=7).time_budget_s == 7


def test_dev_mode_is_never_on_in_vercel_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAILQUEUE_DEV", "1")
    assert load_settings().dev_mode
    monkeypatch.setenv("VERCEL_ENV", "production")
    assert not load_settings().dev_mode


def _dev_running(project: Path, url: str = "redis://127.0.0.1:7777/0", pid: int | None = None) -> None:
    from emailqueue._devstate import DevState, write_state

    state = DevState(url, pid or os.getpid(), str(project), str(project / ".emailqueue" / "outbox"))
    write_state(state, project / ".emailqueue")


def test_dev_state_file_supplies_the_url_only_outside_production(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _dev_running(tmp_path)
    assert load_settings().queue_redis_url == "redis://127.0.0.1:7777/0"
    assert Settings().queue_redis_url == "redis://127.0.0.1:7777/0"  # the class itself resolves it
    monkeypatch.setenv("VERCEL_ENV", "production")
    assert load_settings().queue_redis_url is None


def test_environment_then_dotenv_then_dev_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _dev_running(tmp_path)
    (tmp_path / ".env").write_text("QUEUE_REDIS_URL=redis://dotenv:1/0\n")
    assert (load_settings().queue_redis_url, redis_url_source(load_settings())) == (
        "redis://dotenv:1/0",
        "QUEUE_REDIS_URL in .env",
    )
    monkeypatch.setenv("REDIS_URL", "redis://environ:1/0")
    assert (load_settings().queue_redis_url, redis_url_source(load_settings())) == (
        "redis://environ:1/0",
        "REDIS_URL",
    )
    # Another Redis is configured: nothing of dev's state applies, not even its default sender.
    assert load_settings().email_from is None


def test_dev_supplies_a_sender_only_when_none_is_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _dev_running(tmp_path)
    assert load_settings().email_from == DEV_SENDER
    monkeypatch.setenv("EMAIL_FROM", "App <app@example.com>")
    assert load_settings().email_from == "App <app@example.com>"


def test_a_stale_dev_state_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _dev_running(tmp_path, pid=dead.pid)
    assert load_settings().queue_redis_url is None


def test_a_subdirectory_sees_the_projects_dotenv_and_dev(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("QUEUE_REDIS_URL=redis://dotenv:1/0\nEMAIL_QUEUE_NAME=mine\n")
    _dev_running(tmp_path, url="redis://dotenv:1/0")
    deep = tmp_path / "src" / "app"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    settings = load_settings()
    assert (settings.queue_redis_url, settings.email_queue_name, settings.email_from) == (
        "redis://dotenv:1/0",
        "mine",
        DEV_SENDER,
    )
    # An explicit env file of the caller's choosing is honoured as given.
    assert Settings(_env_file=None).email_queue_name == "emails"  # type: ignore[call-arg]
