"""The `emailqueue` CLI: every command, its JSON output, and its error paths (one line, exit 1)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from emailqueue import QueueError, send_email
from emailqueue._cli import main
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend
from tests.helpers.devproc import clean_env, free_port

EXE = str(Path(sys.executable).with_name("emailqueue"))


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
) -> dict[str, str]:
    for name in ["REDIS_URL", "KV_URL", "EMAILQUEUE_DEV", "VERCEL_ENV"]:
        monkeypatch.delenv(name, raising=False)
    values = {
        "QUEUE_REDIS_URL": redis_url,
        "RESEND_API_KEY": fake_resend.api_key,
        "RESEND_API_URL": fake_resend.url,
        "RESEND_RATE_LIMIT": "0",
        "EMAIL_FROM": "App <app@example.com>",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return {**os.environ, **values}


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_send_then_status_then_drain(env: dict[str, str], fake_resend: FakeResend) -> None:
    code, out = run("send", "--to", "ada@example.com", "--subject", "Hi", "--text", "hello")
    assert code == 0 and out.startswith("queued em_")
    code, out = run("status", "--json")
    status = json.loads(out)
    assert (status["queued"], status["failed"]) == (1, 0)
    code, out = run("status")
    assert "1 queued" in out
    code, out = run("drain", "--max-jobs", "5", "--json")
    report = json.loads(out)
    assert (report["sent"], report["stopped"]) == (1, "empty")
    assert [e.to for e in fake_resend.accepted] == [["ada@example.com"]]
    code, out = run("drain")
    assert code == 0 and "processed 0" in out


def test_status_shows_the_emails_in_packs(env: dict[str, str], fake_resend: FakeResend) -> None:
    """A pack waiting for its retry holds jobs that no other count shows."""
    for i in range(3):
        run("send", "--to", f"p{i}@example.com", "--subject", "Hi", "--text", "x")
    fake_resend.fail_next(1, 500, "internal_server_error")
    code, out = run("drain", "--json")
    assert code == 0 and json.loads(out)["retrying"] == 3
    code, out = run("status")
    assert code == 0 and "0 queued" in out and "3 in 1 pack(s)" in out, out


def test_failed_list_and_requeue(env: dict[str, str], fake_resend: FakeResend) -> None:
    fake_resend.fail_next(1, 422, "validation_error", "rejected ada@example.com")
    _, out = run("send", "--to", "ada@example.com", "--subject", "Hi", "--text", "x")
    job_id = out.split()[-1]
    run("drain")
    code, out = run("failed", "list", "--json")
    (failed,) = json.loads(out)
    assert failed["id"] == job_id and failed["to"] == ["a***@example.com"]
    assert failed["error"]["name"] == "validation_error"
    assert "ada@example.com" not in out
    code, out = run("failed", "list")
    assert job_id in out and "validation_error" in out
    code, out = run("failed", "requeue", job_id, "--json")
    assert json.loads(out) == {
        "requeued": [job_id],
        "not_found": [],
        "already_delivered": [],
        "needs_force": [],
        "needs_force_reason": None,
    }
    run("drain")
    assert fake_resend.accepted[0].idempotency_key == f"emailqueue-{job_id}"
    code, out = run("failed", "requeue", "no-such-job")
    assert code == 1 and "no-such-job" in out


def test_requeue_needs_ids_or_all(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("failed", "requeue")
    assert code == 1
    assert "pass --all" in capsys.readouterr().err
    code, out = run("failed", "requeue", "--all")
    assert code == 0 and "requeued 0" in out


def test_invalid_email_is_one_line_exit_1(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("send", "--to", "not-an-address", "--subject", "Hi", "--text", "x")
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("emailqueue send: error: invalid email") and "to[0]" in err
    assert "Traceback" not in err


def test_missing_configuration_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ["QUEUE_REDIS_URL", "REDIS_URL", "KV_URL"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    code, _ = run("status")
    err = capsys.readouterr().err
    assert code == 1 and "QUEUE_REDIS_URL is not set" in err and err.count("\n") == 1


def test_unreachable_redis_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUEUE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.chdir(tmp_path)
    code, _ = run("status")
    err = capsys.readouterr().err
    assert code == 1 and "connection refused: is Redis running on 127.0.0.1:1?" in err
    assert err.count("\n") == 1


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ["QUEUE_REDIS_URL", "REDIS_URL", "KV_URL"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    done = subprocess.run(
        [EXE, "--debug", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items()},
    )
    assert done.returncode == 1 and "Traceback" in done.stderr and "ConfigurationError" in done.stderr


def test_console_script_worker_runs_the_documented_rq_command(
    env: dict[str, str], fake_resend: FakeResend, tmp_path: Path
) -> None:
    assert run("send", "--to", "bob@example.com", "--subject", "Hi", "--text", "x")[0] == 0
    done = subprocess.run(
        [EXE, "worker", "--burst"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-1500:]
    assert [e.to for e in fake_resend.accepted] == [["bob@example.com"]]


def test_console_script_check_json(env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [EXE, "check", "--json"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"] is True
    assert env["RESEND_API_KEY"] not in done.stdout


def test_drain_progress_bar_on_a_terminal(env: dict[str, str], fake_resend: FakeResend) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for i in range(3):
        run("send", "--to", f"p{i}@example.com", "--subject", "Hi", "--text", "x")
    out = Tty()
    assert main(["drain", "--max-jobs", "3"], out=out) == 0
    text = out.getvalue()
    assert "\r[" in text and "3/3" in text and "sent 3" in text


# -- one clear line for every way Redis cannot be used, on every command and send_email ----------


@pytest.fixture(scope="module")
def locked_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(password="s3cret-pw") as server:
        yield server


BAD_REDIS = {
    "refused": ("redis://127.0.0.1:{free}/0", "connection refused: is Redis running"),
    "no password": ("redis://127.0.0.1:{locked}/0", "the server requires a password and the URL has none"),
    "wrong password": (
        "redis://:wrong-pw@127.0.0.1:{locked}/0",
        "Redis refused the password for user 'default'",
    ),
    "tls to a plain server": ("rediss://127.0.0.1:{plain}/0", "use redis:// for a server without TLS"),
    "unknown host": ("redis://no-such-host.invalid:6379/0", "cannot resolve host 'no-such-host.invalid'"),
}
COMMANDS = {
    "status": ["status"],
    "failed list": ["failed", "list"],
    "drain": ["drain"],
    "send": ["send", "--to", "a@example.com", "--subject", "Hi", "--text", "x"],
    "worker": ["worker", "--burst"],
}


def bad_url(case: str, locked: EmbeddedRedis, plain_url: str) -> tuple[str, str]:
    template, expected = BAD_REDIS[case]
    plain = plain_url.rsplit(":", 1)[1].split("/")[0]
    return template.format(free=free_port(), locked=locked.port, plain=plain), expected


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD_REDIS))
def test_an_unusable_redis_is_one_clear_line_on_every_command(
    case: str,
    command: str,
    locked_server: EmbeddedRedis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, expected = bad_url(case, locked_server, redis_url)
    for name in ["REDIS_URL", "KV_URL", "EMAILQUEUE_DEV", "VERCEL_ENV"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUEUE_REDIS_URL", url)
    monkeypatch.setenv("RESEND_API_KEY", "re_" + "x" * 30)  # a drain must fail on the URL, not on a key
    monkeypatch.setenv("EMAIL_FROM", "App <app@example.com>")
    monkeypatch.chdir(tmp_path)
    code, _ = run(*COMMANDS[command])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and expected in err and "fix:" in err, err
    assert "Traceback" not in err and "s3cret-pw" not in err and "wrong-pw" not in err


@pytest.mark.parametrize("case", list(BAD_REDIS))
def test_send_email_gives_the_same_diagnosis(
    case: str, locked_server: EmbeddedRedis, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, expected = bad_url(case, locked_server, redis_url)
    monkeypatch.setenv("QUEUE_REDIS_URL", url)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QueueError) as caught:
        send_email(from_="a@example.com", to="b@example.com", subject="Hi", text="x")
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert "wrong-pw" not in str(caught.value)


def test_drain_checks_the_url_before_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ["RESEND_API_KEY", "REDIS_URL", "KV_URL", "EMAILQUEUE_DEV"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUEUE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.chdir(tmp_path)
    assert run("drain")[0] == 1
    err = capsys.readouterr().err
    assert "connection refused" in err and "RESEND_API_KEY" not in err


def test_worker_warns_without_a_key_and_logs_each_job_error_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run("send", "--to", "bob@example.com", "--subject", "Hi", "--text", "x")[0] == 0
    no_key = {k: v for k, v in env.items() if k != "RESEND_API_KEY"}
    done = subprocess.run(
        [EXE, "worker", "--burst"], capture_output=True, text=True, timeout=60, env=no_key, cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-2000:]
    assert done.stderr.startswith("emailqueue worker: warning: RESEND_API_KEY is not set")
    assert "ConfigurationError: RESEND_API_KEY is not set" in output
    assert "Traceback" not in output, output[-3000:]


def test_python_dash_m_emailqueue_runs_the_check(env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "emailqueue", "check", "--json"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True


def test_drain_next_to_dev_writes_to_its_outbox(
    tmp_path: Path, redis_url: str, real_conn: redis.Redis
) -> None:
    """Without a key, `emailqueue drain` beside a running dev does what dev's cron route does."""
    from emailqueue._devstate import DevState, write_state

    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    outbox = project / ".emailqueue" / "outbox"
    # A stand-in for a running dev: its state names a live process (this one) and the Redis.
    write_state(DevState(redis_url, os.getpid(), str(project), str(outbox)), project / ".emailqueue")
    env = clean_env()
    sent = subprocess.run(
        [EXE, "send", "--to", "a@example.com", "--subject", "Hi", "--text", "x"],
        cwd=project / "sub",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    done = subprocess.run(
        [EXE, "drain", "--json"], cwd=project / "sub", env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == 1
    (entry,) = outbox.glob("*.json")
    assert json.loads(entry.read_text())["email"]["from"] == "emailqueue dev <onboarding@resend.dev>"


def test_status_of_one_email_by_address_job_id_and_resend_id(
    env: dict[str, str], fake_resend: FakeResend, real_conn: redis.Redis
) -> None:
    """`emailqueue status <query>`: the lifecycle the drain's ack recorded, masked."""
    _, out = run("send", "--to", "ada@example.com", "--subject", "Hi", "--text", "x")
    job_id = out.split()[-1]
    run("drain")
    (accepted,) = fake_resend.accepted
    for query in ("ada@example.com", job_id, accepted.id):
        code, out = run("status", query)
        assert code == 0
        assert out.splitlines()[0] == f"email {accepted.id} (job {job_id}) to a***@example.com: sent"
        assert "ada@example.com" not in out
    code, out = run("status", job_id, "--json")
    (email,) = json.loads(out)["emails"]
    assert [s["state"] for s in email["timeline"]] == ["sent"]
    code, out = run("status", "nobody@example.com")
    assert code == 1 and out == "no email known for n***@example.com (never sent, or its record expired)\n"


def test_suppressions_sync_list_and_remove(
    env: dict[str, str], fake_resend: FakeResend, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_resend.suppressions.add("ada@example.com", "bounce")
    fake_resend.suppressions.add("bob@example.com", "complaint")
    assert run("suppressions", "sync") == (0, "synced from Resend: 2 suppressed address(es)\n")
    code, out = run("suppressions", "list", "--json")
    assert sorted((s["address"], s["origin"]) for s in json.loads(out)) == [
        ("a***@example.com", "bounce"),
        ("b***@example.com", "complaint"),
    ]
    code, out = run("suppressions", "list")
    assert out.startswith("2 suppressed address(es)\n") and "ada@example.com" not in out
    code, out = run("send", "--to", "ada@example.com", "--subject", "Hi", "--text", "x")
    assert code == 1 and "origin: bounce" in capsys.readouterr().err  # refused, nothing queued
    assert run("suppressions", "remove", "ada@example.com") == (
        0,
        "removed a***@example.com from Resend and the local mirror\n",
    )
    assert "ada@example.com" not in fake_resend.suppressions
    code, out = run("send", "--to", "ada@example.com", "--subject", "Hi", "--text", "x")
    assert code == 0 and out.startswith("queued ")


def test_status_counts_swept_orphans(env: dict[str, str], real_conn: redis.Redis) -> None:
    """A late write after the ack (tests/test_orphans.py) shows up in `emailqueue status`."""
    run("send", "--to", "ada@example.com", "--subject", "Hi", "--text", "hello")
    run("drain")
    real_conn.hset("rq:job:em_late", "status", "scheduled")  # a late write: no origin, no data
    real_conn.delete("emailqueue:orphans-gate:emails")  # the sweep's period has passed
    run("send", "--to", "bob@example.com", "--subject", "Hi", "--text", "hello")
    code, out = run("drain", "--json")
    assert code == 0 and json.loads(out)["orphans"] == 1
    code, out = run("status")
    assert code == 0
    assert "orphan job hashes swept (no registry, no TTL): 1 deleted, 0 requeued" in out
    assert json.loads(run("status", "--json")[1])["orphans_removed"] == 1
