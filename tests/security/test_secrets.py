"""Secrets sentinel: run the whole product with marked secrets and look for them everywhere it writes.

Every secret contains ``SENTINEL``: the Resend key, ``CRON_SECRET``, ``QUEUE_ADMIN_TOKEN`` and the
Redis password (which has URL-special characters, so its URL-encoded form differs and is looked for
too). The flow: enqueue (single and fan-out), drain through the cron route with a transient and a
permanent failure, a retry, the admin status and requeue, health, the CLI (``status --json``,
``failed list``, ``check --json``, ``drain``), and a VM ``rq worker`` subprocess at DEBUG level.

Captured: every log record of every logger at DEBUG (emailqueue, rq, httpx, redis, ...), stdout
and stderr of the process and of each subprocess, and every API and CLI reply. None may hold a
secret, and none may hold a full recipient address (the product masks them: ``a***@example.com``).
"""

from __future__ import annotations

import io
import logging
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import redis
from pydantic import SecretStr

from emailqueue import Settings, drain, send_email, send_event_email
from emailqueue._cli import main as cli_main
from emailqueue._connection import connect
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend
from emailqueue.web import create_app
from emailqueue.web._deps import get_connection, get_settings
from tests.security.conftest import (
    CRON,
    EMAILQUEUE,
    HEALTH,
    REQUEUE,
    STATUS,
    TestClient,
    bearer,
    run_rq_worker,
    use_environment,
)

API_KEY = "re_SENTINELkey123456789012345678901"
CRON_SECRET = "SENTINEL-cron-7f3a9c1d"
ADMIN_TOKEN = "SENTINEL-admin-2b8e4d6f"
REDIS_PASSWORD = "SENTINEL/redis pw@1"  # '/', ' ' and '@' must be escaped in a URL
ADA, GRACE, ALAN, EDSGER = (
    "ada.lovelace@example.com",
    "grace.hopper@example.org",
    "alan.turing@example.net",
    "edsger.dijkstra@example.com",
)
ADDRESSES = [ADA, GRACE, ALAN, EDSGER]
SECRETS = [
    API_KEY,
    CRON_SECRET,
    ADMIN_TOKEN,
    REDIS_PASSWORD,
    quote(REDIS_PASSWORD, safe=""),
    quote_plus(REDIS_PASSWORD),
    quote(API_KEY, safe=""),
    "SENTINEL",  # any part of any of them
]
LOGGERS = ["", "emailqueue", "rq", "rq.worker", "httpx", "httpcore", "redis", "fastapi", "uvicorn"]


@dataclass
class Record:
    """Everything the product said: API/CLI output and logs, each with where it came from."""

    outputs: list[tuple[str, str]] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)

    def output(self, where: str, text: str) -> str:
        self.outputs.append((where, text))
        return text

    def log(self, where: str, text: str) -> str:
        self.logs.append((where, text))
        return text

    def assert_clean(self, *, addresses_in_outputs: bool = False) -> None:
        for where, text in self.outputs + self.logs:
            for secret in SECRETS:
                assert secret not in text, f"{secret!r} leaked in {where}:\n{text[-3000:]}"
        checked = self.logs + ([] if addresses_in_outputs else self.outputs)
        for where, text in checked:
            for address in ADDRESSES:
                assert address not in text, f"full address {address} in {where}:\n{text[-3000:]}"


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(password=REDIS_PASSWORD) as srv:
        yield srv


@pytest.fixture
def conn(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    connection = connect(server.url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def fake() -> Iterator[FakeResend]:
    with FakeResend(api_key=API_KEY) as resend:
        yield resend


@pytest.fixture
def env(
    server: EmbeddedRedis, fake: FakeResend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """The environment of a deployment: every secret set, as the CLI and subprocesses read them."""
    values = {
        "QUEUE_REDIS_URL": server.url,
        "RESEND_API_KEY": API_KEY,
        "RESEND_API_URL": fake.url,
        "CRON_SECRET": CRON_SECRET,
        "QUEUE_ADMIN_TOKEN": ADMIN_TOKEN,
        "EMAIL_FROM": "App <app@example.com>",
        "RESEND_RATE_LIMIT": "0",
        "EMAIL_BACKOFF_BASE_S": "1",
    }
    return use_environment(monkeypatch, tmp_path, **values)


@pytest.fixture
def settings(server: EmbeddedRedis, fake: FakeResend) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        queue_redis_url=server.url,
        resend_api_key=SecretStr(API_KEY),
        resend_api_url=fake.url,
        email_from="App <app@example.com>",
        cron_secret=SecretStr(CRON_SECRET),
        queue_admin_token=SecretStr(ADMIN_TOKEN),
        resend_rate_limit=0,
        drain_concurrency=1,
        email_max_attempts=3,
        email_backoff_base_s=1,
        resend_timeout_s=2,
        resend_connect_timeout_s=1,
        email_pack=False,  # the run below counts single requests; packing logs no address either
    )


@pytest.fixture
def client(settings: Settings, conn: redis.Redis) -> Iterator[TestClient]:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    app.dependency_overrides[get_connection] = lambda: conn
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def later() -> float:
    return time.time() + 7200  # past any retry delay: a later cron run


def cli(record: Record, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli_main(list(argv), out=out)
    return code, record.output(f"emailqueue {' '.join(argv)}", out.getvalue())


def test_no_secret_and_no_full_address_anywhere_in_a_full_run(
    conn: redis.Redis,
    settings: Settings,
    fake: FakeResend,
    client: TestClient,
    env: dict[str, str],
    debug_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    record = Record()
    cron, admin = bearer(CRON_SECRET), bearer(ADMIN_TOKEN)

    # Enqueue: singles with display names and cc, and a fan-out (one batch job).
    ada_job = send_email(
        to=f"Ada Lovelace <{ADA}>", cc=[ALAN], subject="Receipt", text="t", connection=conn, settings=settings
    )
    send_email(to=GRACE, subject=f"Note for {EDSGER}", html="<p>x</p>", connection=conn, settings=settings)
    send_event_email("gala", [ALAN, EDSGER], "Invite", text="t", connection=conn, settings=settings)

    # A transient failure, then a permanent one on the retry; Resend's messages quote addresses.
    fake.fail_next(1, 500, "internal_server_error", f"upstream hiccup while sending to {ADA}")
    first = client.get(CRON, headers=cron)
    record.output("GET cron", first.text)
    assert (first.json()["sent"], first.json()["retrying"]) == (3, 1), first.text
    fake.fail_next(1, 422, "validation_error", f"The address {ADA} (cc {ALAN}) is on a suppression list")
    retried = drain(connection=conn, settings=settings, wall_clock=later)
    assert (retried.promoted, retried.failed) == (1, 1)

    # Admin and health, right and wrong.
    status = client.get(STATUS, headers=admin)
    assert status.json()["failed"] == 1 and status.json()["recent_failed"][0]["id"] == ada_job
    record.output("GET status", status.text)
    for reply in (
        client.get(STATUS, headers=bearer(CRON_SECRET)),
        client.get(CRON, headers=bearer(ADMIN_TOKEN)),
        client.post(REQUEUE, headers=admin, json={"ids": [ADA]}),
        client.post(REQUEUE, headers=admin, json={"ids": [ada_job, "em_missing"]}),
        client.get(HEALTH),
    ):
        record.output(f"{reply.request.method} {reply.request.url.path}", reply.text)

    # The CLI, in-process (its logs land in caplog), reading the same secrets from the environment.
    fake.fail_next(1, 422, "validation_error", f"Rejected {ADA} again")
    assert cli(record, "drain", "--json")[0] == 0
    for argv in (["status", "--json"], ["status"], ["failed", "list"], ["failed", "list", "--json"]):
        assert cli(record, *argv)[0] == 0
    assert cli(record, "failed", "requeue", "--all", "--json")[0] == 0
    assert cli_main(["check", "--json"]) == 0
    captured = capsys.readouterr()
    record.output("emailqueue check --json", captured.out)
    record.log("process stderr", captured.err)

    # A VM worker at DEBUG, and one CLI command as its own process.
    send_email(to=EDSGER, subject="Late", text="t", connection=conn, settings=settings)
    fake.fail_next(1, 422, "validation_error", f"Suppressed: {EDSGER}")
    worker = run_rq_worker(env["QUEUE_REDIS_URL"], env, tmp_path, "--logging_level", "DEBUG")
    assert worker.returncode == 0, worker.stderr[-3000:]
    record.log("rq worker stdout", worker.stdout)
    record.log("rq worker stderr", worker.stderr)
    listed = subprocess.run(
        [EMAILQUEUE, "failed", "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    record.output("emailqueue failed list (process)", listed.stdout)
    record.log("emailqueue failed list (process) stderr", listed.stderr)

    for item in debug_logs.records:
        record.log(f"log {item.name}", item.getMessage())
    record.log("caplog (formatted, with tracebacks)", debug_logs.text)

    # The run did what it says, and its logs are not empty: "nothing leaked" means something.
    # Ada failed every time (500, 422, 422 under the CLI's drain, 422 under the worker, which took
    # her requeued job first); everyone else went out.
    assert sorted(e.to[0] for e in fake.accepted) == sorted([GRACE, ALAN, EDSGER, EDSGER])
    worker_output = worker.stdout + worker.stderr
    assert "Job OK" in worker_output and "Suppressed: e***@example.com" in worker_output
    logs = "\n".join(text for _, text in record.logs)
    assert "a***@example.com" in logs and "HTTP Request: POST" in logs and "failed for good" in logs
    assert "RESEND_API_KEY is set: re_" in "".join(text for where, text in record.outputs if "check" in where)
    record.assert_clean()


# ---------------------------------------------------------------------------------------------
# Defects
# ---------------------------------------------------------------------------------------------


def test_a_resend_error_quoting_the_api_key_reaches_no_log_worker_output_or_stored_record(
    conn: redis.Redis,
    settings: Settings,
    fake: FakeResend,
    env: dict[str, str],
    debug_logs: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    record = Record()
    quoting = f"API key {API_KEY} may not send to {ADA}"
    send_email(to=ADA, subject="s", text="t", connection=conn, settings=settings)
    fake.fail_next(1, 422, "validation_error", quoting)
    assert drain(connection=conn, settings=settings).failed == 1
    send_email(to=ADA, subject="s", text="t", connection=conn, settings=settings)
    fake.fail_next(1, 422, "validation_error", quoting)
    worker = run_rq_worker(env["QUEUE_REDIS_URL"], env, tmp_path)
    assert worker.returncode == 0, worker.stderr[-3000:]
    record.log("rq worker stderr", worker.stderr + worker.stdout)
    record.log("caplog", debug_logs.text)
    # What Redis keeps about the failures (job meta, exc_info, RQ's results stream) is read back
    # by dashboards and `rq info`: it must not hold the key either.
    stored = []
    for key in conn.scan_iter(match="rq:*"):
        kind = conn.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            stored += [repr(v) for v in conn.hgetall(key).values()]
        elif kind == "stream":
            stored += [repr(entry) for entry in conn.xrange(key) or []]
    record.log("redis", "\n".join(stored))
    assert "may not send to a***@example.com" in debug_logs.text  # the message is logged, masked
    record.assert_clean()


def test_the_vm_worker_command_keeps_the_redis_password_out_of_its_command_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [EMAILQUEUE, "worker"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    cmdline = ""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            cmdline = (
                Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
            if "rq" in cmdline.split(" ", 2)[0] or (" worker " in cmdline and "emails" in cmdline):
                break  # exec'd into rq's worker
            time.sleep(0.01)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert "emails" in cmdline, f"the worker never started: {cmdline!r}"
    for secret in (REDIS_PASSWORD, quote(REDIS_PASSWORD, safe=""), "SENTINEL"):
        assert secret not in cmdline, cmdline.replace(quote(REDIS_PASSWORD, safe=""), "<password>")


def test_sentinels_are_detectable(server: EmbeddedRedis) -> None:
    """The control: the forms we look for are the forms a leak would take."""
    assert quote(REDIS_PASSWORD, safe="") in server.url
    assert quote(REDIS_PASSWORD, safe="") != REDIS_PASSWORD
    assert all("SENTINEL" in s for s in (API_KEY, CRON_SECRET, ADMIN_TOKEN, REDIS_PASSWORD))
