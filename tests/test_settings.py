"""Settings: the Redis URL fallbacks Vercel's Upstash integration relies on, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from emailqueue import ConfigurationError, load_settings

VARIABLES = [
    "QUEUE_REDIS_URL",
    "REDIS_URL",
    "KV_URL",
    "RESEND_API_KEY",
    "EMAIL_MAX_ATTEMPTS",
    "VERCEL_ENV",
    "EMAILQUEUE_DEV",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env, no dev state file


def test_redis_url_fallbacks_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # PLATFORM_FACTS "Vercel": the Upstash integration injects KV_URL and REDIS_URL.
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


def test_dev_state_file_supplies_the_url_only_outside_production(monkeypatch: pytest.MonkeyPatch) -> None:
    from emailqueue._devstate import write_state

    write_state("redis://127.0.0.1:7777/0")
    assert load_settings().queue_redis_url == "redis://127.0.0.1:7777/0"
    monkeypatch.setenv("VERCEL_ENV", "production")
    assert load_settings().queue_redis_url is None
