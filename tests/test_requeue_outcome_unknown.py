"""Requeueing never resends an ``outcome_unknown`` job unless the operator forces it.

A job fails as ``outcome_unknown`` when its key's 24 h window closed before Resend told us its
fate: Resend may have delivered it, and no longer recognises its Idempotency-Key
(docs/PLATFORM.md, "Resend: idempotency keys"), so a resend would be a new email. A requeue, by
id or ``--all``, through ``requeue_failed``, the admin route, the CLI or the dashboard, leaves it
failed and reports it in ``needs_force`` with the reason; ``force`` requeues it, to be sent.

The jobs here fail as ``outcome_unknown`` the way a real one does: abandoned on the last attempt
and recovered by a drain only as the key's window closes (``wall_clock=``: nothing waits).
"""

from __future__ import annotations

import io
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import pytest
import redis
from rq.utils import utcformat

from emailqueue import Settings, drain, requeue_failed, send_email
from emailqueue._cli import main
from emailqueue._failure import read_record
from emailqueue._retry import KEY_WINDOW_MARGIN_S, KEY_WINDOW_S, OUTCOME_UNKNOWN
from emailqueue._status import NEEDS_FORCE_REASON
from emailqueue._store import JobStore
from emailqueue.testing import FakeResend
from tests.helpers.api_client import ADMIN_TOKEN, REQUEUE, MakeClient, bearer

#: A drain's clock as the key's window of a job created now is closing.
CLOSING = KEY_WINDOW_S - KEY_WINDOW_MARGIN_S


def fail_as_outcome_unknown(conn: redis.Redis, settings: Settings, to: str = "u@example.com") -> str:
    """A job on its last attempt whose worker died mid-send, recovered as its window closes."""
    job_id = str(send_email(to=to, subject="s", text="t", connection=conn, settings=settings))
    created = time.time()
    conn.hset(f"rq:job:{job_id}", "retries_left", 0)
    JobStore(conn, "emails", settings).claim(n=1, now=created, execution_prefix="dead-", worker="w", grace=30)
    drain(connection=conn, settings=settings, max_jobs=0, wall_clock=lambda: created + CLOSING)
    error = read_record(conn.hget(f"rq:job:{job_id}", "meta")).get("error") or {"name": ""}
    assert error["name"] == OUTCOME_UNKNOWN
    return job_id


def fail_definitely(
    conn: redis.Redis, settings: Settings, fake: FakeResend, to: str = "d@example.com"
) -> str:
    """A job Resend refused (422): nothing was sent, a requeue is safe."""
    job_id = str(send_email(to=to, subject="s", text="t", connection=conn, settings=settings))
    fake.fail_next(1, 422, "validation_error", "rejected")
    assert drain(connection=conn, settings=settings).failed == 1
    return job_id


def is_failed(conn: redis.Redis, job_id: str) -> bool:
    return (
        conn.zscore("rq:failed:emails", job_id) is not None
        and conn.hget(f"rq:job:{job_id}", "status") == b"failed"
    )


# --- requeue_failed (the store's REQUEUE) -------------------------------------------------------


def test_requeue_all_skips_an_outcome_unknown_job_and_says_why(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    unknown = fail_as_outcome_unknown(conn, settings)
    refused = fail_definitely(conn, settings, fake_resend)

    report = requeue_failed(conn, settings)
    assert (report.requeued, report.needs_force, report.not_found) == ([refused], [unknown], [])
    assert report.needs_force_reason == NEEDS_FORCE_REASON
    assert "may send them twice" in NEEDS_FORCE_REASON and "force" in NEEDS_FORCE_REASON
    assert is_failed(conn, unknown), "left failed, as it was"
    assert drain(connection=conn, settings=settings).sent == 1
    assert [e.to for e in fake_resend.accepted] == [["d@example.com"]], "the unknown one is not sent"


def test_requeue_by_id_skips_an_outcome_unknown_job(conn: redis.Redis, settings: Settings) -> None:
    unknown = fail_as_outcome_unknown(conn, settings)
    report = requeue_failed(conn, settings, [unknown])
    assert (report.requeued, report.needs_force, report.not_found) == ([], [unknown], [])
    assert is_failed(conn, unknown) and conn.llen("rq:queue:emails") == 0


def test_a_forced_requeue_sends_an_outcome_unknown_job_again(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """The operator checked Resend: forced, the job is requeued and really sent (its record no
    longer says Resend may have it, or it would fail again unsent as its window has closed)."""
    unknown = fail_as_outcome_unknown(conn, settings)
    report = requeue_failed(conn, settings, force=True)
    assert (report.requeued, report.needs_force, report.needs_force_reason) == ([unknown], [], None)
    record = read_record(conn.hget(f"rq:job:{unknown}", "meta"))
    assert "maybe_sent" not in record and record.get("requeued") == 1
    assert drain(connection=conn, settings=settings).sent == 1
    assert [e.idempotency_key for e in fake_resend.accepted] == [f"emailqueue-{unknown}"]


@pytest.mark.parametrize("force", [False, True])
def test_a_job_requeued_a_day_after_its_creation_gets_a_fresh_key_window(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, force: bool
) -> None:
    """Refused for good (422), fixed and requeued 30 h after it was created: nothing it sent
    before can have been accepted, so its key's window starts at the requeue. A timeout of the
    new send is then retried under its key and sent, not failed as ``outcome_unknown`` because
    the job's creation is more than 23 h old."""
    job_id = fail_definitely(conn, settings, fake_resend)
    created = datetime.fromtimestamp(time.time() - 30 * 3600, UTC)
    conn.hset(f"rq:job:{job_id}", "created_at", utcformat(created))
    assert requeue_failed(conn, settings, force=force).requeued == [job_id]
    assert read_record(conn.hget(f"rq:job:{job_id}", "meta")).get("window_from", 0) >= time.time() - 60

    fake_resend.fail_next(1, 500, "internal_server_error")
    assert drain(connection=conn, settings=settings).retrying == 1
    report = drain(connection=conn, settings=settings, wall_clock=lambda: time.time() + 3600)
    assert (report.sent, report.failed) == (1, 0)
    keys = [r.headers["idempotency-key"] for r in fake_resend.requests[-2:]]
    assert keys == [f"emailqueue-{job_id}"] * 2, "the retry went out under the job's own key"


def test_an_outcome_unknown_job_not_in_the_failed_registry_is_not_found(
    conn: redis.Redis, settings: Settings
) -> None:
    """Only a failed job can need force: one whose failed entry is gone is ``not_found``."""
    unknown = fail_as_outcome_unknown(conn, settings)
    conn.zrem("rq:failed:emails", unknown)
    report = requeue_failed(conn, settings, [unknown])
    assert (report.needs_force, report.not_found) == ([], [unknown])


# --- the admin route --------------------------------------------------------------------------


def test_the_admin_route_reports_needs_force_and_requeues_with_force(
    make_client: MakeClient, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    client = make_client(conn)
    unknown = fail_as_outcome_unknown(conn, settings)
    refused = fail_definitely(conn, settings, fake_resend)

    reply = client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"all": True})
    assert reply.status_code == 200
    assert reply.json() == {
        "requeued": [refused],
        "not_found": [],
        "already_delivered": [],
        "needs_force": [unknown],
        "needs_force_reason": NEEDS_FORCE_REASON,
    }
    assert is_failed(conn, unknown)
    reply = client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"ids": [unknown]})
    assert (reply.json()["requeued"], reply.json()["needs_force"]) == ([], [unknown])

    reply = client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"ids": [unknown], "force": True})
    assert (reply.status_code, reply.json()["requeued"], reply.json()["needs_force"]) == (200, [unknown], [])
    assert conn.lrange("rq:queue:emails", 0, -1) == [refused.encode(), unknown.encode()]


def test_the_admin_route_refuses_a_force_that_is_not_a_boolean(
    make_client: MakeClient, conn: redis.Redis
) -> None:
    reply = make_client(conn).post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"all": True, "force": "yes"})
    assert reply.status_code == 422 and "force" in reply.text


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, fake_resend: FakeResend) -> None:
    for name in ["REDIS_URL", "KV_URL", "EMAILQUEUE_DEV", "VERCEL_ENV"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUEUE_REDIS_URL", redis_url)
    monkeypatch.setenv("RESEND_API_KEY", fake_resend.api_key)
    monkeypatch.setenv("RESEND_API_URL", fake_resend.url)
    monkeypatch.chdir(tmp_path)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_the_cli_skips_an_outcome_unknown_job_unless_forced(
    cli_env: None, real_conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    unknown = fail_as_outcome_unknown(real_conn, settings)
    refused = fail_definitely(real_conn, settings, fake_resend)

    code, out = run("failed", "requeue", "--all")
    assert code == 1, "not everything asked for was requeued"
    assert out.splitlines() == [
        "requeued 1 job(s)",
        f"not requeued: {unknown}",
        f"  {NEEDS_FORCE_REASON} (--force)",
    ]
    assert is_failed(real_conn, unknown)
    code, out = run("failed", "requeue", unknown, "--json")
    assert code == 1
    assert (json.loads(out)["needs_force"], json.loads(out)["requeued"]) == ([unknown], [])

    code, out = run("failed", "requeue", unknown, "--force")
    assert (code, out) == (0, "requeued 1 job(s)\n")
    assert real_conn.lrange("rq:queue:emails", 0, -1) == [refused.encode(), unknown.encode()]


# --- the dashboard's requeue button -------------------------------------------------------------


def test_the_dashboard_button_says_why_an_outcome_unknown_job_was_not_requeued(
    make_client: MakeClient, conn: redis.Redis, settings: Settings
) -> None:
    unknown = fail_as_outcome_unknown(conn, settings)
    client = make_client(conn)
    page = client.get("/api/admin/dashboard/", headers=bearer(ADMIN_TOKEN)).text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None
    done = client.post(
        "/api/admin/dashboard/requeue",
        content=f"csrf={csrf.group(1)}&job_id={unknown}".encode(),
        headers=bearer(ADMIN_TOKEN),
        follow_redirects=False,
    )
    assert done.status_code == 303
    message = unquote(done.headers["location"])
    assert f"{unknown} was not requeued: its outcome is unknown" in message and "--force" in message
    assert is_failed(conn, unknown)
