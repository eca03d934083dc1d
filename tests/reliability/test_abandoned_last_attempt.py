"""A job whose last attempt's worker dies after Resend accepted it is delivered once, never FAILED.

The worker dies between Resend's acceptance and its reply, so nothing on the job says it was
sent: the execution is abandoned, its outcome unknown. With no attempts left, RQ's own cleanup
(and the drain's recovery, before) failed such a job as abandoned, though Resend had sent it.
Now it is held on (emailqueue._retry.plan_abandoned): resent under its key at the backoff cap,
answered with Resend's replay (docs/PLATFORM.md, "Resend: idempotency keys"), and done. It fails,
as ``outcome_unknown``, only once its key's window is closing.

Real processes: RQ workers killed with SIGKILL (the whole tree, or only the work horse, as the
OOM killer does). "Later" is built, not waited for: drains take ``wall_clock=``, Redis is aged
(:func:`age_redis`), and RQ's cleanup, which reads the real clock, finds the entry's deadline
moved into the past.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from emailqueue import Settings, drain, requeue_failed, send_email
from emailqueue._failure import read_record
from emailqueue._retry import ABANDONED, KEY_WINDOW_MARGIN_S, KEY_WINDOW_S, OUTCOME_UNKNOWN
from emailqueue.testing import FakeResend

from ..helpers.rq_helpers import release_scheduled
from .conftest import make_settings
from .faults import (
    age_redis,
    process_tree,
    sigkill_tree,
    start_emailqueue_worker,
    start_rq_worker,
    stop_worker,
    wait_for,
    worker_env,
)
from .ledger import Ledger, stuck_count

pytestmark = pytest.mark.real_redis

#: Resend replies this late after it accepted the email: the worker is killed in between.
LATE_REPLY_S = 2.0
#: The worker processes' backoff: 1 s, so a held job is due again at once (RQ counts whole seconds).
FAST = {"EMAIL_BACKOFF_BASE_S": "1", "EMAIL_BACKOFF_CAP_S": "1", "RESEND_TIMEOUT_S": "5"}
#: The job classes that hold on under RQ's own cleanup.
EMAIL_JOB = ["--job-class", "emailqueue.EmailJob"]


@pytest.fixture
def last_attempt(fake_resend: FakeResend, redis_url: str) -> Settings:
    """One attempt per email: the first send is the last (RQ's ``retries_left`` is unset)."""
    return make_settings(fake_resend, redis_url, email_max_attempts=1)


def _env(redis_url: str, fake: FakeResend) -> dict[str, str]:
    return worker_env(redis_url, fake.api_key, fake.url, **FAST)


def _kill_worker_after_accept(conn: redis.Redis, redis_url: str, fake: FakeResend, tmp_path: Path) -> str:
    """A VM worker sends the one queued email, Resend accepts it, and the worker (with its work
    horse and scheduler) dies before the reply. Returns the job's started-registry member."""
    fake.timeout_after_accept(1, LATE_REPLY_S)
    with open(tmp_path / "worker-a.log", "wb") as log:
        proc = start_rq_worker(redis_url, _env(redis_url, fake), log, tmp_path, extra=EMAIL_JOB)
        try:
            wait_for(lambda: len(fake.accepted) == 1, 30, "Resend to accept the email")
        finally:
            sigkill_tree(proc)
    wait_for(lambda: len(fake.requests) == 1, 30, "Resend to answer the dead worker's request")
    (member,) = [m.decode() for m in conn.zrange("rq:wip:emails", 0, -1)]
    job_id = member.rsplit(":", 1)[0]
    assert conn.hget(f"rq:job:{job_id}", "status") == b"started"
    assert not conn.hexists(f"rq:job:{job_id}", "emailqueue_accepted"), "the reply never came"
    return member


def _run_burst_worker(redis_url: str, fake: FakeResend, tmp_path: Path, name: str) -> None:
    with open(tmp_path / f"{name}.log", "wb") as log:
        proc = start_rq_worker(redis_url, _env(redis_url, fake), log, tmp_path, burst=True, extra=EMAIL_JOB)
        assert proc.wait(timeout=60) == 0, (tmp_path / f"{name}.log").read_text()


def _record(conn: redis.Redis, job_id: str) -> tuple[str | None, bool]:
    record = read_record(conn.hget(f"rq:job:{job_id}", "meta"))
    return (record.get("error") or {}).get("name"), bool(record.get("maybe_sent"))


def _assert_delivered_once(conn: redis.Redis, fake: FakeResend, ledger: Ledger, job_id: str) -> None:
    counts = ledger.finish(http=[r.status for r in fake.requests])
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert len(fake.accepted) == 1, "Resend accepted the email exactly once"
    assert fake.replays >= 1, "the resend under its key got Resend's replay"
    assert not conn.exists(f"rq:job:{job_id}"), "the job finished (result_ttl=0 deletes it)"


def test_last_attempt_killed_after_accept_is_held_by_a_drain_and_delivered_once(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    last_attempt: Settings,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """Recovery by a drain: RECOVER finds the dead worker's execution with no attempts left and
    HOLD schedules one more send at the backoff cap, instead of failing it; a later drain sends
    it under its key and gets Resend's replay."""
    ledger = new_ledger("abandoned-last-attempt/drain")
    job_id = str(
        send_email(to="a@example.com", subject="Hi", text="x", connection=real_conn, settings=last_attempt)
    )
    ledger.expect(["a@example.com"])
    member = _kill_worker_after_accept(real_conn, redis_url, fake_resend, tmp_path)
    age_redis(real_conn)  # the dead worker's execution hash, worker keys and scheduler lock expire
    t0 = time.time() + 10_000

    report = drain(connection=real_conn, settings=last_attempt, wall_clock=lambda: t0)
    assert (report.recovered, report.processed, report.failed) == (1, 0, 0)
    assert real_conn.hget(f"rq:job:{job_id}", "status") == b"scheduled"
    assert real_conn.zcard("rq:failed:emails") == 0, "never failed"
    assert _record(real_conn, job_id) == (ABANDONED, True)
    assert real_conn.zscore(f"rq:executions:{job_id}", member.rsplit(":", 1)[1]) is None
    due = real_conn.zscore("rq:scheduled:emails", job_id) or 0
    assert t0 < due <= t0 + last_attempt.email_backoff_cap_s + 1

    report = drain(connection=real_conn, settings=last_attempt, wall_clock=lambda: due + 1)
    assert (report.promoted, report.sent, report.failed) == (1, 1, 0)
    _assert_delivered_once(real_conn, fake_resend, ledger, job_id)


def test_last_attempt_killed_after_accept_is_held_by_a_workers_maintenance_and_delivered_once(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    last_attempt: Settings,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """Recovery by a second VM worker (``--job-class emailqueue.EmailJob``): its maintenance, RQ's
    StartedJobRegistry cleanup, would fail the job with AbandonedJobError; EmailJob's failure
    callback schedules one more send under its key instead. A worker sends it: Resend's replay."""
    ledger = new_ledger("abandoned-last-attempt/worker-maintenance")
    job_id = str(
        send_email(to="a@example.com", subject="Hi", text="x", connection=real_conn, settings=last_attempt)
    )
    ledger.expect(["a@example.com"])
    member = _kill_worker_after_accept(real_conn, redis_url, fake_resend, tmp_path)
    age_redis(real_conn)
    real_conn.zadd("rq:wip:emails", {member: time.time() - 1})  # RQ's cleanup reads the real clock

    _run_burst_worker(redis_url, fake_resend, tmp_path, "worker-b")  # its maintenance recovers it
    assert real_conn.zcard("rq:wip:emails") == 0, "worker B's maintenance settled the execution"
    assert real_conn.zcard("rq:failed:emails") == 0, "never failed"
    assert _record(real_conn, job_id) == (ABANDONED, True)
    assert len(fake_resend.requests) == 1

    release_scheduled(Queue("emails", connection=real_conn, serializer=JSONSerializer))
    _run_burst_worker(redis_url, fake_resend, tmp_path, "worker-c")
    _assert_delivered_once(real_conn, fake_resend, ledger, job_id)


def _work_horse(worker_pid: int) -> int:
    """The worker's current work horse: the descendant RQ put in a process group of its own."""
    horses = [pid for pid in process_tree(worker_pid)[1:] if os.getpgid(pid) == pid]
    assert len(horses) == 1, horses
    return horses[0]


@pytest.mark.slow
def test_last_attempts_work_horse_killed_after_accept_is_held_by_emailqueue_worker(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    last_attempt: Settings,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """``emailqueue worker`` alone: the OOM killer SIGKILLs the work horse after Resend accepted
    the email, the reply still on its way. The surviving worker (EmailWorker) would fail the job,
    its last attempt; it holds on instead (1 s here), its scheduler brings the job back, and the
    resend under the same key is Resend's replay: delivered once, never failed."""
    ledger = new_ledger("abandoned-last-attempt/work-horse-killed")
    job_id = str(
        send_email(to="h@example.com", subject="Hi", text="x", connection=real_conn, settings=last_attempt)
    )
    ledger.expect(["h@example.com"])
    fake_resend.timeout_after_accept(1, 0.5)
    with open(tmp_path / "emailqueue-worker.log", "wb") as log:
        worker = start_emailqueue_worker(_env(redis_url, fake_resend), log, tmp_path)
        try:
            wait_for(lambda: fake_resend.accepted, 30, "the accept")
            os.kill(_work_horse(worker.pid), signal.SIGKILL)
            wait_for(lambda: fake_resend.replays > 0, 30, "the resend under the same key")
            wait_for(lambda: stuck_count(real_conn) == 0, 10, "the worker to finish the job")
        finally:
            rc = stop_worker(worker)
    assert rc == 0, (tmp_path / "emailqueue-worker.log").read_text()
    _assert_delivered_once(real_conn, fake_resend, ledger, job_id)


def test_a_job_abandoned_as_its_window_closes_fails_as_outcome_unknown_and_is_not_resent(
    real_conn: redis.Redis, redis_url: str, fake_resend: FakeResend, last_attempt: Settings, tmp_path: Path
) -> None:
    """The same death, recovered only as the key's 24 h window is closing (23 h after the job was
    created): a resend could reach Resend after it forgot the key and be sent as a new email, so
    the job fails, as ``outcome_unknown`` (its message: it may have been delivered), not
    ``abandoned``, and nothing more is sent."""
    job_id = str(
        send_email(to="a@example.com", subject="Hi", text="x", connection=real_conn, settings=last_attempt)
    )
    created = time.time()  # no earlier than the job's created_at
    _kill_worker_after_accept(real_conn, redis_url, fake_resend, tmp_path)
    age_redis(real_conn)

    closing = created + KEY_WINDOW_S - KEY_WINDOW_MARGIN_S
    report = drain(connection=real_conn, settings=last_attempt, wall_clock=lambda: closing)
    assert (report.recovered, report.processed) == (1, 0)
    assert real_conn.zscore("rq:failed:emails", job_id) is not None
    assert _record(real_conn, job_id) == (OUTCOME_UNKNOWN, True)
    message = (read_record(real_conn.hget(f"rq:job:{job_id}", "meta")).get("error") or {}).get("message", "")
    assert "may have delivered" in message
    assert (
        drain(connection=real_conn, settings=last_attempt, wall_clock=lambda: closing + 3600).processed == 0
    )
    assert len(fake_resend.requests) == 1, "nothing sent after the abandoned send"
    report = requeue_failed(real_conn, last_attempt)
    assert (report.requeued, report.needs_force) == ([], [job_id]), "nor by a requeue, unless forced"
