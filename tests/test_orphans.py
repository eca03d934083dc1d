"""No job hash is left in no registry and without a TTL: a late write replayed after the ack
(a stalled connection delivering RQ's status ``HSET`` or ``job.save`` once the job was sent and
deleted) is swept by a drain that did work, counted in ``emailqueue status``, while an idle run
stays at its 3 commands (tests/test_drain.py) and other queues' jobs are never touched."""

from __future__ import annotations

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue import Settings, drain, queue_status, send_email
from emailqueue._keys import QueueKeys
from emailqueue._store import JobStore
from emailqueue.testing import FakeResend


def orphan_free(conn: redis.Redis) -> list[str]:
    """Job hashes with no TTL in no list or registry of the queue (the invariant under test)."""
    keys = QueueKeys.of(JobStore(conn, "emails", Settings(_env_file=None)).queue)  # type: ignore[call-arg]
    queued = {v.decode() for v in conn.lrange(keys.queue, 0, -1)}
    listed = queued | {v.decode() for v in conn.zrange(keys.scheduled, 0, -1)}
    listed |= {v.decode() for v in conn.zrange(keys.failed, 0, -1)}
    found = []
    for key in conn.scan_iter(match="rq:job:*"):
        job_id = key.decode().removeprefix("rq:job:")
        if conn.ttl(key) == -1 and job_id not in listed and conn.hget(key, "status") != b"started":
            found.append(job_id)
    return found


def sent_and_acked(conn: redis.Redis, settings: Settings) -> tuple[str, dict[bytes, bytes]]:
    """One email through a drain; returns its id and its hash as it was before the send."""
    job_id = send_email(to="a@example.com", subject="Hi", text="x", connection=conn, settings=settings)
    saved = conn.hgetall(f"rq:job:{job_id}")
    assert drain(connection=conn, settings=settings).sent == 1
    assert conn.exists(f"rq:job:{job_id}") == 0
    return job_id, saved


def gate(conn: redis.Redis, settings: Settings) -> str:
    return QueueKeys.of(JobStore(conn, "emails", settings).queue).orphans_gate


def work_run(conn: redis.Redis, settings: Settings, to: str = "b@example.com", *, later: bool = True) -> int:
    """A drain run that has something to send (the sweep runs only on those). ``later``: the
    sweep's period has passed since the last sweep (its gate key expired)."""
    if later:
        conn.delete(gate(conn, settings))
    send_email(to=to, subject="Hi", text="x", connection=conn, settings=settings)
    return drain(connection=conn, settings=settings).orphans


def test_a_late_status_write_after_the_ack_is_swept_and_counted(
    conn: redis.Redis, settings: Settings
) -> None:
    job_id, _ = sent_and_acked(conn, settings)
    conn.hset(f"rq:job:{job_id}", "status", "scheduled")  # the late write: a fragment, no TTL
    assert orphan_free(conn) == [job_id]
    assert work_run(conn, settings) == 1
    assert orphan_free(conn) == []
    status = queue_status(conn, settings)
    assert (status.orphans_removed, status.orphans_requeued) == (1, 0)


def test_a_late_full_job_save_is_requeued_and_sent_with_the_same_idempotency_key(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """A replayed ``job.save`` holds the whole email and no acceptance record: it cannot be told
    from an email never sent, so it goes back on the queue, with its own Idempotency-Key."""
    job_id, saved = sent_and_acked(conn, settings)
    conn.hset(f"rq:job:{job_id}", mapping={**saved, b"status": b"scheduled"})
    assert work_run(conn, settings) == 1
    assert orphan_free(conn) == []
    assert queue_status(conn, settings).orphans_requeued == 1
    drain(connection=conn, settings=settings)
    keys = [r.headers["idempotency-key"] for r in fake_resend.requests]
    assert keys.count(f"emailqueue-{job_id}") == 2  # the same key both times: Resend sends it once
    assert conn.exists(f"rq:job:{job_id}") == 0


def test_an_accepted_orphan_is_deleted_not_sent_again(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id, saved = sent_and_acked(conn, settings)
    conn.hset(f"rq:job:{job_id}", mapping={**saved, b"status": b"queued", b"emailqueue_accepted": b"{}"})
    assert work_run(conn, settings) == 1
    assert conn.exists(f"rq:job:{job_id}") == 0
    assert len(fake_resend.accepted) == 2  # the first email and the work run's, nothing again


def test_the_sweep_runs_at_most_once_per_period_and_leaves_live_and_foreign_jobs_alone(
    conn: redis.Redis, settings: Settings
) -> None:
    job_id, _ = sent_and_acked(conn, settings)
    assert work_run(conn, settings, "c@example.com") == 0  # swept now: nothing to find
    conn.hset(f"rq:job:{job_id}", "status", "finished")
    assert work_run(conn, settings, "d@example.com", later=False) == 0  # within the period: not yet
    # Live jobs (queued, scheduled) and another queue's stray job are not orphans of ours.
    live = send_email(to="e@example.com", subject="Hi", text="x", connection=conn, settings=settings)
    foreign = Job.create("x.y", id="other", connection=conn, origin="other", serializer=JSONSerializer)
    foreign.save()
    assert work_run(conn, settings, "f@example.com") == 1
    assert conn.exists(f"rq:job:{job_id}") == 0
    assert conn.exists("rq:job:other") == 1
    assert conn.exists(f"rq:job:{live}") == 0  # it was sent, not swept
    assert queue_status(conn, settings).orphans_removed == 1


def test_the_sweep_resumes_its_scan_where_it_stopped(
    real_conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Each step looks at a bounded number of keys; one full cycle of steps covers them all."""
    conn = real_conn
    conn.mset({f"filler:{i}": "x" for i in range(3000)})
    job_id, _ = sent_and_acked(conn, settings)
    conn.hset(f"rq:job:{job_id}", "status", "scheduled")
    state = QueueKeys.of(JobStore(conn, "emails", settings).queue).orphans
    found, steps, cycles = 0, 0, 0
    while cycles < 2 and steps <= 400:  # the cycle under way began before the orphan existed
        found += work_run(conn, settings, f"s{steps}@example.com")
        steps += 1
        cycles += conn.hget(state, "cursor") == b"0"
    assert found == 1
    assert 2 < steps <= 400  # 3000 keys take more than one step a cycle, and cycles end
    assert orphan_free(conn) == []
