"""The serverless drain: bounds, idle cost, retries, recovery of abandoned jobs, refusal of
foreign or pickled jobs. Faults use real processes and sockets where the fault is real."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from emailqueue import ConfigurationError, Settings, drain, send_email
from emailqueue._constants import META_KEY
from emailqueue.testing import FakeResend
from tests.helpers.redis_stats import CommandCounter, counting_redis
from tests.helpers.rq_helpers import registry_counts, scheduled_times

LATER = 10_000.0  # seconds: "a later run", past every retry delay and abandonment window


def later_clock() -> float:
    return time.time() + LATER


def people(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i}@example.com" for i in range(n)]


def singles(conn: redis.Redis, settings: Settings, n: int, prefix: str = "u") -> list[str]:
    """n separate emails, one job each (a fan-out would make them one batch job)."""
    return [
        send_email(to=a, subject="Hi", text="x", connection=conn, settings=settings)
        for a in people(n, prefix)
    ]


def test_idle_run_costs_at_most_3_commands_in_1_round_trip(
    real_conn: redis.Redis, redis_url: str, settings: Settings
) -> None:
    conn, trips = counting_redis(redis_url)
    drain(connection=conn, settings=settings)  # warm: connection open, nothing cached server-side
    trips.reset()
    with CommandCounter(real_conn) as counted:
        report = drain(connection=conn, settings=settings)
    print(
        f"\nidle drain run: {counted.total} commands {counted.by_command}, {trips.round_trips} round trip(s)"
    )
    assert report.stopped == "empty" and report.processed == 0
    assert counted.total <= 3
    assert trips.round_trips == 1
    # No worker registration, no heartbeat: nothing is left behind.
    assert real_conn.keys("rq:worker*") == []
    conn.close()


def test_drain_delivers_and_leaves_no_job_keys(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    ids = singles(conn, settings, 5)
    report = drain(connection=conn, settings=settings)
    assert (report.processed, report.sent, report.remaining, report.stopped) == (5, 5, 0, "empty")
    assert sorted(e.idempotency_key or "" for e in fake_resend.accepted) == sorted(
        f"emailqueue-{i}" for i in ids
    )
    assert list(conn.scan_iter(match="rq:job:*")) == []
    assert conn.zcard("rq:wip:emails") == 0


def test_max_jobs_bounds_a_run_and_the_next_run_takes_the_rest(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    singles(conn, settings, 5)
    first = drain(connection=conn, settings=settings, max_jobs=3)
    assert (first.processed, first.stopped, first.remaining) == (3, "max_jobs", 2)
    second = drain(connection=conn, settings=settings, max_jobs=3)
    assert (second.processed, second.stopped, second.remaining) == (2, "empty", 0)
    assert len(fake_resend.accepted) == 5


def test_time_budget_stops_taking_jobs_before_a_send_could_overrun(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    singles(conn, settings, 5)
    ticks = itertools.count()
    # Each clock read advances 1 s; one send's worst case is connect + read timeout (1 + 2 s).
    one_at_a_time = settings.model_copy(update={"drain_concurrency": 1})
    report = drain(connection=conn, settings=one_at_a_time, time_budget=6.0, clock=lambda: float(next(ticks)))
    assert report.stopped == "time_budget"
    assert 0 < report.processed < 5
    assert report.remaining == 5 - report.processed


def test_missing_api_key_takes_nothing_off_the_queue(conn: redis.Redis, settings: Settings) -> None:
    send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)
    keyless = settings.model_copy(update={"resend_api_key": None})
    with pytest.raises(ConfigurationError, match="RESEND_API_KEY"):
        drain(connection=conn, settings=keyless)
    assert registry_counts(Queue("emails", connection=conn))["queued"] == 1


def test_transient_failure_is_scheduled_then_promoted_by_a_later_run(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.fail_next(1, 500, "internal_server_error")
    job_id = send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)
    start = time.time()
    report = drain(connection=conn, settings=settings)
    assert (report.retrying, report.sent) == (1, 0)
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    assert scheduled_times(queue)[job_id] >= start + 5  # base 10 s, equal jitter
    assert drain(connection=conn, settings=settings).processed == 0  # not due yet
    report = drain(connection=conn, settings=settings, wall_clock=later_clock)
    assert (report.promoted, report.sent) == (1, 1)
    assert [r.status for r in fake_resend.requests] == [500, 200]
    assert len({r.headers["idempotency-key"] for r in fake_resend.requests}) == 1


def test_drain_leaves_due_retries_to_an_rq_scheduler_holding_the_lock(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.fail_next(1, 500, "internal_server_error")
    send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)
    drain(connection=conn, settings=settings)
    conn.set(RQScheduler.get_locking_key("emails"), "vm-worker", ex=61)
    assert drain(connection=conn, settings=settings, wall_clock=later_clock).promoted == 0
    conn.delete(RQScheduler.get_locking_key("emails"))
    assert drain(connection=conn, settings=settings, wall_clock=later_clock).sent == 1


@pytest.mark.parametrize(("ttl_ms", "promoted"), [(61_000, 0), (52_000, 0), (48_000, 1), (1_000, 1)])
def test_drain_promotes_due_retries_behind_a_scheduler_lock_nobody_refreshes(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, ttl_ms: int, promoted: int
) -> None:
    """Fact (docs/PLATFORM.md, RQ: scheduler lock): a live scheduler refreshes its lock to
    ``interval + 60`` s every ``interval`` s, so its TTL never runs below about 60 s. A lock with
    under 50 s left has gone 10 s unrefreshed: its owner is dead, and the drain promotes without
    waiting for the lock to expire."""
    fake_resend.fail_next(1, 500, "internal_server_error")
    send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)
    drain(connection=conn, settings=settings)
    lock = RQScheduler.get_locking_key("emails")
    conn.set(lock, "dead-worker", px=ttl_ms)
    report = drain(connection=conn, settings=settings, wall_clock=later_clock)
    assert (report.promoted, report.sent) == (promoted, promoted)
    assert conn.exists(lock) == 1  # promoted (or not) while the lock still exists


def test_permanent_failure_goes_to_failed_with_reason(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.fail_next(1, 422, "invalid_from_address", "bad from")
    job_id = send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)
    report = drain(connection=conn, settings=settings)
    assert (report.failed, report.retrying) == (1, 0)
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    assert registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 1}
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    assert job.meta[META_KEY]["error"]["name"] == "invalid_from_address"
    assert job.get_status() == "failed"


def test_pickle_and_foreign_jobs_are_refused_and_the_rest_delivered(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)
    # A job hash planted with a pickle payload that would create a file if unpickled.
    evil = Job.create(
        "emailqueue._jobs.deliver",
        kwargs={"payload": {}},
        connection=conn,
        id="evil",
        serializer=JSONSerializer,
        status="queued",
        origin="emails",
    )  # type: ignore[arg-type]
    evil.save()
    conn.hset("rq:job:evil", "data", zlib.compress(pickle.dumps((os.system, None, (f"touch {marker}",), {}))))
    conn.rpush("rq:queue:emails", "evil")
    queue.enqueue_call(func="os.getcwd", result_ttl=0)  # JSON, but not our function
    send_email(to="b@example.com", subject="s", text="t", connection=conn, settings=settings)
    report = drain(connection=conn, settings=settings)
    assert not marker.exists()
    assert (report.sent, report.failed) == (2, 2)
    assert sorted(e.to[0] for e in fake_resend.accepted) == ["a@example.com", "b@example.com"]
    failed = Job.fetch("evil", connection=conn, serializer=JSONSerializer)
    assert failed.meta[META_KEY]["error"]["name"] == "bad_payload"


def test_an_abandoned_claim_is_recovered_with_the_same_key(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)
    # A drain that "died" mid-send: the job is claimed (started) and never acked.
    from emailqueue._store import JobStore

    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    JobStore(conn, "emails", settings).claim(
        n=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30
    )
    assert registry_counts(queue)["started"] == 1
    assert drain(connection=conn, settings=settings).processed == 0  # not yet abandoned
    report = drain(connection=conn, settings=settings, wall_clock=later_clock)
    assert (report.recovered, report.sent) == (1, 1)
    assert fake_resend.accepted[0].idempotency_key == f"emailqueue-{job_id}"
    assert registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}


def _drain_process(redis_url: str, fake: FakeResend) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "QUEUE_REDIS_URL": redis_url,
        "RESEND_API_KEY": fake.api_key,
        "RESEND_API_URL": fake.url,
        "RESEND_RATE_LIMIT": "0",
        "RESEND_TIMEOUT_S": "30",
        "EMAIL_PACK": "false",  # the single path; tests/test_pack.py kills a packing drain
    }
    return subprocess.Popen(
        [sys.executable, "-c", "import emailqueue; print(emailqueue.drain().to_dict())"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_during_a_send_loses_nothing_and_sends_nothing_twice(
    real_conn: redis.Redis, redis_url: str, settings: Settings, fake_resend: FakeResend
) -> None:
    ids = singles(real_conn, settings, 4)
    gate = fake_resend.hold()
    proc = _drain_process(redis_url, fake_resend)
    try:
        assert gate.arrived.wait(20), "the drain never reached Resend"
        proc.send_signal(signal.SIGKILL)  # killed at maxDuration, mid-send
        proc.communicate(timeout=10)
    finally:
        gate.release()  # Resend then accepts the request the dead process sent
    queue = Queue("emails", connection=real_conn, serializer=JSONSerializer)
    assert StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)  # the claim is left behind
    for _ in range(5):
        drain(connection=real_conn, settings=settings, wall_clock=later_clock)
        if registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}:
            break
    counts = fake_resend.accepted_count_by_key()
    assert sorted(counts) == sorted(f"emailqueue-{i}" for i in ids)
    assert set(counts.values()) == {1}, counts  # a replay under the same key is not a second email
    assert registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}


@pytest.fixture
def rq_worker_env(redis_url: str, fake_resend: FakeResend) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "QUEUE_REDIS_URL": redis_url,
        "RESEND_API_KEY": fake_resend.api_key,
        "RESEND_API_URL": fake_resend.url,
        "RESEND_RATE_LIMIT": "0",
    }


def test_three_overlapping_drains_and_a_vm_worker_deliver_300_exactly_once(
    real_conn: redis.Redis,
    redis_url: str,
    settings: Settings,
    fake_resend: FakeResend,
    rq_worker_env: dict[str, str],
) -> None:
    ids = singles(real_conn, settings, 300)
    rq_bin = str(Path(sys.executable).with_name("rq"))
    worker = subprocess.Popen(
        [
            rq_bin,
            "worker",
            "--with-scheduler",
            "--serializer",
            "json",
            "--url",
            redis_url,
            "emails",
            "--burst",
        ],
        env=rq_worker_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Let the VM worker get going first, and slow Resend a little, so all four really overlap.
    deadline = time.monotonic() + 30
    while not fake_resend.accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    fake_resend.latency = 0.01
    reports = []

    def run() -> None:
        conn = redis.Redis.from_url(redis_url)
        while True:
            report = drain(connection=conn, settings=settings, max_jobs=25)
            reports.append(report)
            if report.stopped == "empty":
                break
        conn.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err[-2000:]
    counts = fake_resend.accepted_count_by_key()
    by_drains = sum(r.sent for r in reports)
    print(f"\noverlap: drains sent {by_drains}, the VM worker {len(counts) - by_drains}")
    assert sorted(counts) == sorted(f"emailqueue-{i}" for i in ids)
    assert set(counts.values()) == {1}
    assert 0 < by_drains < 300  # both kinds of worker took part
    queue = Queue("emails", connection=real_conn, serializer=JSONSerializer)
    assert registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}


def test_a_reused_key_after_its_marker_expired_replaces_a_failed_job_and_is_sent(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    # Failed jobs are kept 30 days, markers 7: a key reused after that must not vanish.
    fake_resend.fail_next(1, 422, "validation_error", "bad")
    job_id = send_email(
        to="a@example.com",
        subject="v1",
        text="t",
        idempotency_key="order-1",
        connection=conn,
        settings=settings,
    )
    drain(connection=conn, settings=settings)
    assert conn.zscore("rq:failed:emails", job_id) is not None
    for marker in conn.scan_iter(match="emailqueue:dedup:*"):
        conn.delete(marker)  # as if EMAIL_DEDUP_TTL_S had passed
    again = send_email(to="a@example.com", subject="v2", text="t", idempotency_key="order-1", connection=conn,
                       settings=settings)  # fmt: skip
    assert again == job_id
    assert conn.llen("rq:queue:emails") == 1 and conn.zscore("rq:failed:emails", job_id) is None
    assert drain(connection=conn, settings=settings).sent == 1
    assert [e.subject for e in fake_resend.accepted] == ["v2"]


def test_a_reused_key_does_not_overwrite_a_job_still_pending(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    send_email(to="a@example.com", subject="v1", text="t", idempotency_key="order-1", connection=conn,
               settings=settings)  # fmt: skip
    for marker in conn.scan_iter(match="emailqueue:dedup:*"):
        conn.delete(marker)
    send_email(to="a@example.com", subject="v2", text="t", idempotency_key="order-1", connection=conn,
               settings=settings)  # fmt: skip
    assert conn.llen("rq:queue:emails") == 1
    drain(connection=conn, settings=settings)
    assert [e.subject for e in fake_resend.accepted] == ["v1"]


def test_the_intermediate_sweep_forgets_ids_that_left_the_list(conn: redis.Redis, settings: Settings) -> None:
    from emailqueue._store import JobStore

    store = JobStore(conn, "emails", settings)
    keys = store.keys
    job_id = send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)

    def run(now: float) -> list[str]:
        return store.sweep(now=now, grace=120)

    conn.lmove(keys.queue, keys.intermediate)  # a VM worker dequeues it ...
    assert run(1000.0) == []  # ... a drain notes when it first saw it there ...
    conn.lrem(keys.intermediate, 0, job_id)  # ... and the work horse takes it on.
    conn.rpush(keys.intermediate, "other")  # the list is not empty, so sweeps keep running
    conn.hset("rq:job:other", "status", "started")
    run(1100.0)
    conn.lpush(keys.intermediate, job_id)  # much later the same job passes through again
    assert run(5000.0) == []  # a fresh grace period, not the stale first sighting
    assert conn.llen(keys.queue) == 0
    assert run(5200.0) == [job_id]  # past that grace: back on the queue
    assert conn.lrange(keys.queue, 0, -1) == [job_id.encode()]
