"""Managed Redis (scenario e): the whole pipeline as an ACL user that may not run the commands
Upstash and ElastiCache restrict (docs/PLATFORM.md "Upstash Redis": CONFIG and CLIENT KILL are
restricted), on the suite's own Valkey started with an ACL file.

Two users: ``app`` lacks CONFIG, CLIENT KILL, MONITOR, DEBUG, SAVE/BGSAVE, FLUSHALL, SHUTDOWN and
ACL; ``noclient`` also lacks every CLIENT subcommand (SETNAME, INFO, LIST). Everything works as
both; without CLIENT, RQ's worker and the connection check may only *warn*.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from emailqueue import Settings, drain, health, queue_status, requeue_failed, send_email, send_event_email
from emailqueue._check import main as check_main
from emailqueue._connection import connect
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend
from tests.reliability.ledger import Ledger
from tests.security.conftest import (
    ADMIN_TOKEN,
    CRON,
    CRON_SECRET,
    HEALTH,
    STATUS,
    MakeClient,
    bearer,
    run_rq_worker,
    subprocess_env,
)

RESTRICTED = "-config -client|kill -monitor -debug -save -bgsave -flushall -shutdown -acl"
ACL = f"""\
user default on nopass ~* &* +@all
user app on >app-pw-1 ~* &* +@all {RESTRICTED}
user noclient on >app-pw-2 ~* &* +@all {RESTRICTED} -client
"""
USERS = {"app": "app-pw-1", "noclient": "app-pw-2"}


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    aclfile = tmp_path_factory.mktemp("acl") / "users.acl"
    aclfile.write_text(ACL)
    with EmbeddedRedis(aclfile=aclfile) as server:
        yield server


@pytest.fixture
def admin(acl_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """The default user, for the test's own bookkeeping (and a clean database each time)."""
    conn = redis.Redis.from_url(acl_server.url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def user_url(server: EmbeddedRedis, user: str) -> str:
    return f"redis://{user}:{USERS[user]}@127.0.0.1:{server.port}/0"


@pytest.mark.parametrize("user", list(USERS))
def test_the_acl_really_denies_what_managed_redis_denies(acl_server: EmbeddedRedis, user: str) -> None:
    """The control: without it, "the pipeline works" could mean "nothing was restricted"."""
    conn = redis.Redis.from_url(user_url(acl_server, user))
    try:
        denied = [
            ("CONFIG", "GET", "maxmemory"),
            ("CLIENT", "KILL", "ID", "999999"),
            ("MONITOR",),
            ("SAVE",),
            ("BGSAVE",),
            ("FLUSHALL",),
            ("ACL", "WHOAMI"),
        ]
        if user == "noclient":
            denied += [("CLIENT", "SETNAME", "x"), ("CLIENT", "INFO"), ("CLIENT", "LIST")]
        for command in denied:
            with pytest.raises(redis.exceptions.NoPermissionError):
                conn.execute_command(*command)  # type: ignore[no-untyped-call]
        with pytest.raises(redis.ResponseError):  # ACL-denied, or disabled outright as on managed Redis
            conn.execute_command("DEBUG", "SLEEP", "0")  # type: ignore[no-untyped-call]
        assert conn.ping() is True and conn.eval("return 1", 0) == 1
    finally:
        conn.close()


@pytest.mark.parametrize("user", list(USERS))
def test_the_whole_pipeline_runs_as_a_restricted_user(
    acl_server: EmbeddedRedis,
    admin: redis.Redis,
    user: str,
    settings: Settings,
    fake_resend: FakeResend,
    make_client: MakeClient,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    url = user_url(acl_server, user)
    conn = connect(url)
    settings = settings.model_copy(update={"queue_redis_url": url, "resend_rate_limit": 100.0})
    try:
        # Enqueue: singles, an idempotent one twice, and a fan-out (one batch job).
        doomed = send_email(
            to="doomed@example.com", subject="s", text="t", connection=conn, settings=settings
        )
        for _ in range(2):
            send_email(to="a@example.com", subject="s", text="t", idempotency_key="order-1", connection=conn,
                       settings=settings)  # fmt: skip
        people = ["b@example.com", "c@example.com", "d@example.com"]
        assert (
            len(send_event_email("launch", people, "Hi", text="t", connection=conn, settings=settings)) == 1
        )
        assert send_event_email("launch", people, "Hi", text="t", connection=conn, settings=settings) == []

        # Drain with a permanent failure; status; requeue; drain again; health.
        # Resend refuses this address for good, whichever concurrent send reaches it first.
        fake_resend.reject_recipients = {"doomed@example.com"}
        report = drain(connection=conn, settings=settings)
        assert (report.processed, report.failed) == (3, 1), report
        status = queue_status(conn, settings)
        assert (status.queued, status.failed, [f.id for f in status.recent_failed]) == (0, 1, [doomed])
        fake_resend.reject_recipients = set()  # the address is fixed: the requeue sends it
        assert requeue_failed(conn, settings).requeued == [doomed]
        assert drain(connection=conn, settings=settings).sent == 1
        assert health(conn).ok
        assert sorted(e.to[0] for e in fake_resend.accepted) == sorted(
            ["a@example.com", *people, "doomed@example.com"]
        )

        # The HTTP routes on this connection.
        client = make_client(conn, queue_redis_url=url)
        assert client.get(STATUS, headers=bearer(ADMIN_TOKEN)).json()["failed"] == 0
        assert client.get(CRON, headers=bearer(CRON_SECRET)).json()["stopped"] == "empty"
        assert client.get(HEALTH).json()["ok"] is True
    finally:
        conn.close()

    # The connection check.
    assert check_main(["--url", url, "--json", "--timeout", "5"]) == 0
    steps = {s["name"]: s for s in json.loads(capsys.readouterr().out)["steps"]}
    assert all(s["status"] != "fail" for s in steps.values()), steps
    assert steps["round_trip"]["status"] == "ok"
    assert steps["client"]["status"] == ("ok" if user == "app" else "warn")
    if user == "noclient":
        assert "client|setname" in steps["client"]["detail"]

    # A VM worker.
    for i in range(2):
        send_email(to=f"vm{i}@example.com", subject="s", text="t", connection=admin, settings=settings)
    env = subprocess_env(
        RESEND_API_KEY=fake_resend.api_key, RESEND_API_URL=fake_resend.url, RESEND_RATE_LIMIT="0"
    )
    worker = run_rq_worker(url, env, tmp_path)
    output = worker.stdout + worker.stderr
    assert worker.returncode == 0, output[-3000:]
    assert {"vm0@example.com", "vm1@example.com"} <= {e.to[0] for e in fake_resend.accepted}
    assert admin.llen("rq:queue:emails") == 0 and not list(admin.scan_iter(match="rq:job:*"))
    assert "Traceback" not in output
    complaints = [
        line for line in output.splitlines() if re.search(r"error|warn|denied|permission|NOPERM", line, re.I)
    ]
    if user == "app":
        assert complaints == [], complaints
    else:  # RQ's own warning about CLIENT SETNAME, and nothing else
        assert complaints and all(re.search(r"CLIENT SETNAME", line) for line in complaints), complaints

    # The scenario's counts, for docs/RELIABILITY.md (scenario e).
    ledger = Ledger(f"e/managed-redis-acl-{user}", admin, fake_resend)
    ledger.expect(["a@example.com", *people, "doomed@example.com", "vm0@example.com", "vm1@example.com"])
    counts = ledger.finish(user=user)
    assert (counts.lost, counts.duplicated, counts.stuck) == (0, 0, 0), counts
