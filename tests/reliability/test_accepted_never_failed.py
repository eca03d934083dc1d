"""An email Resend accepted is never recorded as failed, and requeueing never sends it again.

The chain these tests rebuild with real processes (Fact, docs/PLATFORM.md, "RQ: executions"):

1. a VM worker (``rq worker``) is SIGKILLed mid-send, after Resend accepted the email;
2. later, the dead execution's hash (``rq:execution:<job>:<exec>``) has expired, but the job's
   execution registry (``rq:executions:<job>``) still lists it: RQ keeps that entry 60 s longer;
3. the job is recovered, by a drain's RECOVER or by another VM worker's maintenance;
4. a VM worker re-runs it, Resend answers with its idempotent replay, and ``deliver`` returns;
5. RQ's success handling deletes the job (``result_ttl=0``), which fetches every execution the
   registry lists: the dead one raises ``Execution ... not found``, RQ treats the success as a
   failure, retries, and every retry fails the same way until the job is FAILED.

"Later" is built, not waited for: :func:`age_redis` deletes what would have expired by the time
the dead execution's hash did, and nothing that would still be there.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from emailqueue import Settings, drain, requeue_failed, send_email
from emailqueue.testing import FakeResend

from ..helpers.rq_helpers import release_scheduled
from .faults import age_redis, sigkill_tree, start_rq_worker, wait_for, worker_env

pytestmark = pytest.mark.real_redis

#: Resend replies this late after it accepted the email: the worker is killed in between.
LATE_REPLY_S = 2.0


def _kill_worker_after_accept(
    conn: redis.Redis, redis_url: str, fake: FakeResend, tmp_path: Path
) -> tuple[str, str, int]:
    """Queue one email; a VM worker sends it, Resend accepts it, the worker dies before the reply.
    Returns the job id, the dead execution's started-registry member, and its hash's TTL."""
    fake.timeout_after_accept(1, LATE_REPLY_S)
    env = worker_env(redis_url, fake.api_key, fake.url, RESEND_TIMEOUT_S="5", RESEND_CONNECT_TIMEOUT_S="2")
    with open(tmp_path / "worker-a.log", "wb") as log:
        proc = start_rq_worker(redis_url, env, log, tmp_path)
        try:
            wait_for(lambda: len(fake.accepted) == 1, 30, "Resend to accept the email")
        finally:
            sigkill_tree(proc)
    wait_for(lambda: len(fake.requests) == 1, 30, "Resend to answer the dead worker's request")
    members = [m.decode() for m in conn.zrange("rq:wip:emails", 0, -1)]
    assert len(members) == 1, members
    job_id = members[0].rsplit(":", 1)[0]
    assert conn.hget(f"rq:job:{job_id}", "status") == b"started"
    ttl = int(conn.ttl(f"rq:execution:{members[0]}"))
    assert ttl > 0, "the dead execution's hash should still be there right after the kill"
    return job_id, members[0], ttl


def _just_after_the_execution_expired(conn: redis.Redis, job_id: str, member: str, ttl: int) -> None:
    """Redis as it is once the dead execution's hash expired, while its registry entry lives on."""
    age_redis(conn, ttl + 1)
    assert not conn.exists(f"rq:execution:{member}")
    execution_id = member.rsplit(":", 1)[1]
    assert conn.zscore(f"rq:executions:{job_id}", execution_id) is not None, (
        "the window under test: the job's execution registry still lists the dead execution"
    )


def _run_burst_worker(redis_url: str, fake: FakeResend, tmp_path: Path, name: str) -> None:
    env = worker_env(redis_url, fake.api_key, fake.url, RESEND_TIMEOUT_S="5", RESEND_CONNECT_TIMEOUT_S="2")
    with open(tmp_path / f"{name}.log", "wb") as log:
        proc = start_rq_worker(redis_url, env, log, tmp_path, burst=True)
        assert proc.wait(timeout=60) == 0, (tmp_path / f"{name}.log").read_text()


def _assert_delivered_once(conn: redis.Redis, fake: FakeResend, job_id: str, settings: Settings) -> None:
    assert len(fake.accepted) == 1, "Resend accepted the email exactly once"
    assert fake.replays >= 1, "the re-run reached Resend and got its idempotent replay"
    assert conn.zcard("rq:failed:emails") == 0, "an accepted email must never be recorded as failed"
    assert conn.zcard("rq:scheduled:emails") == 0, "nor scheduled for a retry"
    assert conn.llen("rq:queue:emails") == 0
    assert not conn.exists(f"rq:job:{job_id}"), "the job finished (result_ttl=0 deletes it)"
    # And the documented repair finds nothing to send again.
    assert requeue_failed(conn, settings).requeued == []
    assert len(fake.accepted) == 1


def test_accepted_email_recovered_by_a_drain_is_not_failed(
    real_conn: redis.Redis, redis_url: str, fake_resend: FakeResend, rsettings: Settings, tmp_path: Path
) -> None:
    """Recovery by a drain: worker A dies after Resend accepted; a drain's RECOVER requeues the
    job; VM worker B re-runs it and gets Resend's replay. The job finishes; it is never FAILED."""
    send_email(to="a@example.com", subject="Hi", text="x", connection=real_conn, settings=rsettings)
    job_id, member, ttl = _kill_worker_after_accept(real_conn, redis_url, fake_resend, tmp_path)
    _just_after_the_execution_expired(real_conn, job_id, member, ttl)

    later = time.time() + ttl + 1
    report = drain(connection=real_conn, settings=rsettings, max_jobs=0, wall_clock=lambda: later)
    assert report.recovered == 1 and report.processed == 0
    assert real_conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]

    _run_burst_worker(redis_url, fake_resend, tmp_path, "worker-b")
    _assert_delivered_once(real_conn, fake_resend, job_id, rsettings)


def test_accepted_email_recovered_by_a_workers_maintenance_is_not_failed(
    real_conn: redis.Redis, redis_url: str, fake_resend: FakeResend, rsettings: Settings, tmp_path: Path
) -> None:
    """Recovery by a second VM worker's maintenance: worker A dies after Resend accepted; worker
    B's StartedJobRegistry cleanup retries the abandoned job; a worker re-runs it and gets
    Resend's replay. The job finishes; it is never FAILED."""
    send_email(to="a@example.com", subject="Hi", text="x", connection=real_conn, settings=rsettings)
    job_id, member, ttl = _kill_worker_after_accept(real_conn, redis_url, fake_resend, tmp_path)
    _just_after_the_execution_expired(real_conn, job_id, member, ttl)
    # RQ's maintenance reads the started registry against the real clock: its deadline has passed.
    real_conn.zadd("rq:wip:emails", {member: time.time() - 1})

    _run_burst_worker(redis_url, fake_resend, tmp_path, "worker-b")  # maintenance recovers it
    assert real_conn.zcard("rq:wip:emails") == 0, "worker B's maintenance recovered the execution"
    queue = Queue("emails", connection=real_conn, serializer=JSONSerializer)
    release_scheduled(queue)  # the retry RQ scheduled comes due
    _run_burst_worker(redis_url, fake_resend, tmp_path, "worker-c")
    _assert_delivered_once(real_conn, fake_resend, job_id, rsettings)
