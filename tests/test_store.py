"""The job store (emailqueue._store): recovery, the one way to fail, and recorded acceptance.

Every test runs on both tiers (fakeredis and the suite's real server).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue

from emailqueue import Settings, configure_worker, drain, requeue_failed, send_email, send_event_email
from emailqueue._failure import read_record
from emailqueue._payload import Payload, decode_job_data
from emailqueue._records import exc_string_of
from emailqueue._store import JobStore
from emailqueue.testing import FakeResend

from .helpers.rq_helpers import run_burst

LATER = 10_000.0
#: Past the hold-on deadline of a job created now (its key's window is closing).
WINDOW_CLOSED = 23 * 3600.0


@pytest.fixture
def store(conn: redis.Redis, settings: Settings) -> JobStore:
    return JobStore(conn, "emails", settings)


@pytest.fixture(autouse=True)
def worker_runtime(settings: Settings) -> Iterator[None]:
    configure_worker(settings)
    yield
    configure_worker()


def _claim_and_die(store: JobStore, settings: Settings, *, retries_left: int | None = None) -> str:
    """Queue one email; a drain claims it and dies. Returns the job id."""
    job_id = send_email(to="a@example.com", subject="s", text="t", connection=store.conn, settings=settings)
    if retries_left is not None:
        store.conn.hset(f"rq:job:{job_id}", "retries_left", retries_left)
    (row,) = store.claim(n=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30)
    assert row.job_id == job_id
    return job_id


def _failed_shape(conn: redis.Redis, job_id: str) -> dict[str, object]:
    """What a failed job looks like to the status API and to RQ's tools."""
    key = f"rq:job:{job_id}"
    record = read_record(conn.hget(key, "meta"))
    error = record.get("error")
    return {
        "status": conn.hget(key, "status"),
        "in_failed_registry": conn.zscore("rq:failed:emails", job_id) is not None,
        "has_ttl": conn.ttl(key) > 0,
        "has_error_record": error is not None,
        "has_attempts": "attempts" in record,
        "has_rq_result": bool(exc_string_of(conn.xrevrange(f"rq:results:{job_id}", "+", "-", count=1))),
        "started": conn.zcard("rq:wip:emails"),
    }


FAILED_SHAPE = {
    "status": b"failed",
    "in_failed_registry": True,
    "has_ttl": True,
    "has_error_record": True,
    "has_attempts": True,
    "has_rq_result": True,
    "started": 0,
}


def test_recover_spends_one_attempt_of_an_abandoned_job(store: JobStore, settings: Settings) -> None:
    """Without it, a job that kills its worker every time is requeued forever."""
    job_id = _claim_and_die(store, settings, retries_left=3)
    recovered = store.recover(now=time.time() + LATER, limit=10, lease=30)
    assert recovered.requeued == [job_id]
    assert store.conn.hget(f"rq:job:{job_id}", "retries_left") == b"2"
    assert store.conn.hget(f"rq:job:{job_id}", "status") == b"queued"
    assert store.conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]
    assert store.conn.zcard("rq:wip:emails") == 0


def test_a_job_that_keeps_killing_its_worker_ends_failed(store: JobStore, settings: Settings) -> None:
    """Once its attempts are spent it is held on under its key (tests/test_abandoned_hold_on.py),
    and fails when the key's window closes (23 h on)."""
    job_id = _claim_and_die(store, settings, retries_left=2)
    for _ in range(2):
        assert store.recover(now=time.time() + LATER, limit=10, lease=30).requeued == [job_id]
        store.claim(n=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30)
    recovered = store.recover(now=time.time() + WINDOW_CLOSED, limit=10, lease=30)
    assert (recovered.requeued, [i for i, _ in recovered.exhausted]) == ([], [job_id])
    assert store.conn.hget(f"rq:job:{job_id}", "status") == b"failed"


def test_abandoned_with_no_attempts_left_is_failed_with_the_one_failure_shape(
    store: JobStore, settings: Settings
) -> None:
    """Past its key's window (before it, it is held on: tests/test_abandoned_hold_on.py)."""
    job_id = _claim_and_die(store, settings, retries_left=0)
    report = drain(connection=store.conn, settings=settings, wall_clock=lambda: time.time() + WINDOW_CLOSED)
    assert report.recovered == 1 and report.sent == 0
    assert _failed_shape(store.conn, job_id) == FAILED_SHAPE
    record = read_record(store.conn.hget(f"rq:job:{job_id}", "meta"))
    error = record.get("error") or {"name": "", "message": "", "status_code": 0}
    assert (error["name"], error["status_code"]) == ("outcome_unknown", None)
    assert "abandoned: its worker died mid-send" in error["message"]
    assert store.conn.llen("rq:queue:emails") == 0


def test_failing_an_abandoned_job_keeps_its_earlier_record_and_other_meta(
    store: JobStore, settings: Settings
) -> None:
    """The failure record is added to what the job carried: requeue counts and foreign meta keys."""
    job_id = _claim_and_die(store, settings, retries_left=0)
    earlier = {"emailqueue": {"attempts": 2, "requeued": 1, "past_attempts": 3}, "app": {"x": 1}}
    store.conn.hset(f"rq:job:{job_id}", "meta", json.dumps(earlier))
    store.recover(now=time.time() + LATER, limit=10, lease=30)
    meta = json.loads(store.conn.hget(f"rq:job:{job_id}", "meta") or b"{}")
    assert meta["app"] == {"x": 1}
    record = read_record(meta)
    assert (record.get("attempts"), record.get("requeued"), record.get("past_attempts")) == (3, 1, 3)
    assert record.get("error", {}).get("name") == "abandoned"


def test_an_exhausted_job_is_failed_once_by_overlapping_recoveries(
    store: JobStore, settings: Settings
) -> None:
    """RECOVER leaves an exhausted entry for FAIL, whose ZREM decides who fails it."""
    job_id = _claim_and_die(store, settings, retries_left=0)
    first = store.scripts.recover(now=time.time() + LATER, limit=10, lease=30)
    (_, member) = first.exhausted[0]
    assert store.fail(job_id, name="abandoned", message="x", member=member)
    assert not store.fail(job_id, name="abandoned", message="x", member=member)
    assert read_record(store.conn.hget(f"rq:job:{job_id}", "meta")).get("attempts") == 1


def test_every_way_a_job_fails_leaves_the_same_shape(
    conn: redis.Redis, store: JobStore, settings: Settings, fake_resend: FakeResend
) -> None:
    """A permanent send error (drain), an unreadable job, a rejected batch recipient."""
    fake_resend.fail_next(1, 422, "validation_error", "bad")
    sent = send_email(to="p@example.com", subject="s", text="t", connection=conn, settings=settings)
    assert drain(connection=conn, settings=settings).failed == 1
    bad = send_email(to="u@example.com", subject="s", text="t", connection=conn, settings=settings)
    conn.hset(f"rq:job:{bad}", mapping={"data": b"garbage", "created_at": "not a date"})
    assert drain(connection=conn, settings=settings).failed == 1
    fake_resend.reject_recipients = {"r1@example.com"}
    send_event_email(
        "launch", ["r0@example.com", "r1@example.com"], "Hi", text="x", connection=conn, settings=settings
    )
    assert drain(connection=conn, settings=settings).failed == 1
    rejected = [i.decode() for i in conn.zrange("rq:failed:emails", 0, -1) if i.decode() not in (sent, bad)]
    for job_id in (sent, bad, *rejected):
        assert _failed_shape(conn, job_id) == FAILED_SHAPE, job_id
    assert len(rejected) == 1
    # What each one says, where the status API and RQ's tools read it.
    reason = exc_string_of(conn.xrevrange(f"rq:results:{sent}", "+", "-", count=1))
    assert "validation_error" in reason and "bad" in reason
    unreadable = read_record(conn.hget(f"rq:job:{bad}", "meta")).get("error", {})
    assert unreadable.get("name") == "bad_payload"
    assert unreadable.get("message", "").startswith("the job hash is unreadable: ")
    (job_id,) = rejected
    record = read_record(conn.hget(f"rq:job:{job_id}", "meta"))
    assert record.get("error") == {
        "name": "rejected_recipient",
        "message": "invalid recipient",
        "status_code": 422,
    }
    payload = decode_job_data(conn.hget(f"rq:job:{job_id}", "data"))["payload"]
    assert payload["idempotency_key"] == f"emailqueue-{job_id}"
    assert (payload["event_id"], payload["email"]["to"]) == ("launch", ["r1@example.com"])


def test_a_failed_job_keeps_its_own_failure_ttl(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """The TTL the job was enqueued with, not today's setting."""
    job_id = send_email(to="p@example.com", subject="s", text="t", connection=conn, settings=settings)
    conn.hset(f"rq:job:{job_id}", "failure_ttl", 1000)
    fake_resend.fail_next(1, 422, "validation_error", "bad")
    assert drain(connection=conn, settings=settings).failed == 1
    assert 0 < conn.ttl(f"rq:job:{job_id}") <= 1000
    assert conn.zscore("rq:failed:emails", job_id) <= time.time() + 1001


def test_a_drain_retry_keeps_the_job_json_with_its_record(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = send_email(to="p@example.com", subject="s", text="t", connection=conn, settings=settings)
    fake_resend.fail_next(1, 500, "internal_server_error", "boom")
    assert drain(connection=conn, settings=settings).retrying == 1
    meta = json.loads(conn.hget(f"rq:job:{job_id}", "meta") or b"")  # JSON, never pickle
    record = read_record(meta)
    assert record.get("attempts") == 1 and record.get("error", {}).get("name") == "internal_server_error"
    assert isinstance(record.get("next_retry_in_s"), int)
    assert decode_job_data(conn.hget(f"rq:job:{job_id}", "data"))["payload"]["email"]["to"] == [
        "p@example.com"
    ]
    assert conn.zscore("rq:scheduled:emails", job_id) is not None


@pytest.mark.parametrize("max_attempts", [1, 6])
def test_a_vm_worker_with_no_api_key_keeps_the_jobs_attempts(
    queue: Queue,
    settings: Settings,
    fake_resend: FakeResend,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    max_attempts: int,
) -> None:
    settings = settings.model_copy(update={"email_max_attempts": max_attempts})
    job_id = send_email(to="a@example.com", subject="s", text="t", queue=queue, settings=settings)
    earlier = {"emailqueue": {"attempts": 0, "requeued": 2, "past_attempts": 4}}
    queue.connection.hset(f"rq:job:{job_id}", "meta", json.dumps(earlier))
    before = int(queue.connection.hget(f"rq:job:{job_id}", "retries_left") or 0)
    configure_worker()  # the worker reads its environment: no RESEND_API_KEY there
    for name in ("RESEND_API_KEY", "EMAILQUEUE_DEV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUEUE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.chdir(tmp_path)  # and no .env file
    for _ in range(3):
        run_burst(queue)
        scheduled = queue.connection.zrange("rq:scheduled:emails", 0, -1)
        assert scheduled == [job_id.encode()], "the job waits for the fix, it is not failed"
        queue.connection.zrem("rq:scheduled:emails", job_id)  # its retry comes due
        queue.connection.hset(f"rq:job:{job_id}", "status", "queued")
        queue.connection.rpush("rq:queue:emails", job_id)
    assert int(queue.connection.hget(f"rq:job:{job_id}", "retries_left") or 0) == before
    record = read_record(queue.connection.hget(f"rq:job:{job_id}", "meta"))
    assert record.get("error", {}) == {
        "name": "misconfigured",
        "message": record.get("error", {}).get("message", ""),
        "status_code": None,
    }
    assert "RESEND_API_KEY" in record.get("error", {}).get("message", "")
    assert (record.get("attempts"), record.get("requeued"), record.get("past_attempts")) == (0, 2, 4)
    assert record.get("next_retry_in_s") == 60
    assert fake_resend.requests == []


# --- a recorded acceptance is honoured everywhere ---


def test_requeue_never_sends_a_failed_job_resend_accepted(
    store: JobStore, settings: Settings, fake_resend: FakeResend
) -> None:
    """Fact (docs/PLATFORM.md, Resend: idempotency keys last 24 hours): a requeue after that
    would send an accepted email again, so it deletes the job instead."""
    job_id = _claim_and_die(store, settings)
    assert store.accept(job_id, worker_name="w", sent=1)
    store.fail(job_id, name="internal_error", message="RQ failed after the send", member=f"{job_id}:dead-1")
    report = requeue_failed(store.conn, settings)
    assert (report.requeued, report.already_delivered) == ([], [job_id])
    assert not store.conn.exists(f"rq:job:{job_id}")
    drain(connection=store.conn, settings=settings)
    assert fake_resend.requests == []


def test_recovery_finishes_a_job_resend_accepted(
    store: JobStore, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = _claim_and_die(store, settings, retries_left=0)
    store.accept(job_id, worker_name="w", sent=1)
    recovered = store.recover(now=time.time() + LATER, limit=10, lease=30)
    assert (recovered.done, recovered.requeued, recovered.exhausted) == ([job_id], [], [])
    assert not store.conn.exists(f"rq:job:{job_id}")
    assert store.conn.zcard("rq:failed:emails") == 0


def test_deliver_and_the_drain_do_not_send_an_accepted_job_again(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    conn = queue.connection
    store = JobStore(conn, "emails", settings)
    for runner in ("vm", "drain"):
        job_id = send_email(to="a@example.com", subject="s", text="t", queue=queue, settings=settings)
        assert store.accept(job_id, worker_name="", sent=1)
        if runner == "vm":
            run_burst(queue)
        else:
            report = drain(connection=conn, settings=settings)
            assert (report.processed, report.sent) == (1, 0)
        assert not conn.exists(f"rq:job:{job_id}"), runner
    assert fake_resend.requests == []
    assert conn.zcard("rq:failed:emails") == 0


def test_accept_forgets_dead_executions_of_the_job_only(store: JobStore, settings: Settings) -> None:
    """Fact (docs/PLATFORM.md, RQ: executions): RQ's success handling fetches every execution
    the job's registry lists; one whose hash is gone, or another worker's, must not be listed."""
    job_id = _claim_and_die(store, settings)
    conn = store.conn
    conn.zadd(f"rq:executions:{job_id}", {"dead": time.time() + 60, "other": time.time() + 60, "mine": 1e12})
    conn.hset(f"rq:execution:{job_id}:other", mapping={"worker_name": "worker-a"})
    conn.hset(f"rq:execution:{job_id}:mine", mapping={"worker_name": "worker-b"})
    assert store.accept(job_id, worker_name="worker-b", sent=1)
    assert conn.zrange(f"rq:executions:{job_id}", 0, -1) == [b"mine"]
    accepted = json.loads(conn.hget(f"rq:job:{job_id}", "emailqueue_accepted") or b"{}")
    assert set(accepted) == {"at", "sent"} and accepted["sent"] == 1 and accepted["at"].endswith("Z")
    assert not store.accept("em_gone", worker_name="", sent=1)
    assert not conn.exists("rq:job:em_gone")


def test_the_worker_runtime_reuses_its_clients_and_closes_them(settings: Settings) -> None:
    from emailqueue._jobs import WorkerRuntime

    runtime = WorkerRuntime()
    runtime.configure(settings)
    first = runtime.client_for(settings)
    assert runtime.client_for(settings) is first  # one pool per configuration, reused
    assert runtime.get()[1] is first
    http = first._http  # type: ignore[attr-defined]
    assert not http.is_closed
    runtime.configure()  # forget: the clients it built are closed
    assert http.is_closed
    assert runtime.client_for(settings) is not first
    runtime.close()


def test_immediate_sends_reuse_a_runtime_client_that_configure_worker_closes(settings: Settings) -> None:
    """send_email(now=True)'s client (short timeouts) is held by the process's runtime, not a
    module cache: reused while warm, closed by ``configure_worker()``."""
    from emailqueue._now_attempt import now_client

    quick = settings.model_copy(update={"email_now_timeout_s": 0.5})
    client = now_client(quick)
    assert now_client(quick) is client
    http = client._http  # type: ignore[attr-defined]
    assert (http.timeout.connect, http.timeout.read) == (0.5, 0.5)  # the immediate path's, not the drain's
    assert now_client(settings) is not client  # another configuration, another pool
    configure_worker()
    assert http.is_closed


def test_a_drain_reports_an_accepted_abandoned_job_as_recovered_not_sent(
    store: JobStore, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = _claim_and_die(store, settings, retries_left=1)
    store.accept(job_id, worker_name="w", sent=1)
    report = drain(connection=store.conn, settings=settings, wall_clock=lambda: time.time() + LATER)
    assert (report.recovered, report.processed, report.sent, report.failed) == (1, 0, 0, 0)
    assert fake_resend.requests == []


def test_requeue_with_one_attempt_gives_no_retries(store: JobStore, settings: Settings) -> None:
    one = settings.model_copy(update={"email_max_attempts": 1})
    job_id = _claim_and_die(store, one)
    store.fail(job_id, name="x", message="y", member=f"{job_id}:dead-1")
    assert requeue_failed(store.conn, one).requeued == [job_id]
    assert store.conn.hget(f"rq:job:{job_id}", "retries_left") == b"0"


def test_requeue_counts_add_up_over_requeues_and_start_from_nothing(
    store: JobStore, settings: Settings
) -> None:
    """The requeue record: ``requeued`` counts every requeue, ``past_attempts`` every attempt
    before the last one; a job failed without our record (by RQ itself) starts from zero."""
    conn = store.conn
    job_id = _claim_and_die(store, settings)
    conn.hset(f"rq:job:{job_id}", "meta", "{}")  # failed by RQ itself: no record of ours
    store.fail(job_id, name="x", message="y", member=f"{job_id}:dead-1")
    conn.hset(f"rq:job:{job_id}", "meta", "{}")
    assert requeue_failed(conn, settings).requeued == [job_id]
    record = read_record(conn.hget(f"rq:job:{job_id}", "meta"))
    assert record.pop("window_from", 0) > 0  # a new key window (test_requeue_outcome_unknown.py)
    assert record == {"attempts": 0, "requeued": 1, "past_attempts": 0}  # and no error
    for attempts, expected in ((2, (2, 2)), (3, (3, 5))):
        meta = {"emailqueue": {**record, "attempts": attempts}}
        conn.hset(f"rq:job:{job_id}", "meta", json.dumps(meta))
        conn.hset(f"rq:job:{job_id}", "status", "failed")
        conn.zadd("rq:failed:emails", {job_id: time.time() + 60})
        assert requeue_failed(conn, settings, [job_id]).requeued == [job_id]
        record = read_record(conn.hget(f"rq:job:{job_id}", "meta"))
        assert (record.get("requeued"), record.get("past_attempts")) == expected


class _Broken:
    """A Sender with a bug: it raises something that is not a SendError."""

    def send(self, email: dict[str, object], *, idempotency_key: str) -> str:
        raise RuntimeError("x" * 400)

    def send_batch(self, emails: list[dict[str, object]], *, idempotency_key: str) -> object:
        raise RuntimeError("x" * 400)


def test_an_unexpected_error_in_a_send_is_retried_as_an_internal_error(
    conn: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="emailqueue.drain")
    ids = [
        send_email(to=f"p{i}@example.com", subject="s", text="t", connection=conn, settings=settings)
        for i in range(2)
    ]
    report = drain(connection=conn, settings=settings, client=_Broken())  # type: ignore[arg-type]
    assert (report.retrying, report.failed, report.sent) == (2, 0, 0)
    said = sorted(r.getMessage()[:60] for r in caplog.records)  # the operator sees job and error
    assert said == sorted(f"unexpected error sending job {i}: RuntimeError('xxx"[:60] for i in ids)
    for job_id in ids:
        error = read_record(conn.hget(f"rq:job:{job_id}", "meta")).get("error", {})
        assert (error.get("name"), error.get("status_code")) == ("internal_error", None)
        assert error.get("message", "").startswith("RuntimeError('xxx")
        assert len(error.get("message", "")) == 300  # cut short


def test_a_drain_reports_how_long_it_ran_on_its_own_clock(conn: redis.Redis, settings: Settings) -> None:
    ticks = iter([10.0, 12.5, 13.0])
    report = drain(connection=conn, settings=settings, clock=lambda: next(ticks))
    assert (report.stopped, report.duration_ms) == ("empty", 2500)


def test_a_drain_puts_back_a_job_a_dead_vm_worker_left_in_the_intermediate_list(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings)
    conn.lmove("rq:queue:emails", "rq:queue:emails:intermediate")  # RQ's dequeue, then the kill
    now = time.time()
    first = drain(connection=conn, settings=settings, wall_clock=lambda: now)  # first sighting
    assert (first.recovered, first.sent) == (0, 0)
    later = drain(connection=conn, settings=settings, wall_clock=lambda: now + 121)
    assert (later.recovered, later.sent) == (1, 1)
    assert [e.idempotency_key for e in fake_resend.accepted] == [f"emailqueue-{job_id}"]


def test_a_drain_without_redis_says_so(settings: Settings) -> None:
    from emailqueue import QueueError

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = redis.Redis(port=port, socket_connect_timeout=1)
    with pytest.raises(QueueError, match=r"^drain: cannot reach Redis"):
        drain(connection=dead, settings=settings)


@pytest.mark.parametrize(
    ("error", "left_after"),
    [
        ("local", 4),  # no send slot in time: not a failed send, the attempt is given back
        ("quota", 4),  # Resend's daily quota: not the email's fault, the attempt is given back
        ("retryable", 3),  # a 500 spends the attempt RQ takes as it schedules the retry
        ("permanent", 0),  # a 422 fails the job now
    ],
)
def test_the_retry_policy_spends_attempts_only_on_failed_sends(
    error: str, left_after: int, settings: Settings
) -> None:
    import random

    from emailqueue import PermanentSendError, QuotaExceededError, RetryableSendError
    from emailqueue._retry import LOCAL_RATE_LIMIT, plan_retry

    exc = {
        "local": RetryableSendError("no slot", name=LOCAL_RATE_LIMIT, retry_after=1.0),
        "quota": QuotaExceededError("quota", name="daily_quota_exceeded", status_code=429),
        "retryable": RetryableSendError("boom", name="internal_server_error", status_code=500),
        "permanent": PermanentSendError("bad", name="validation_error", status_code=422),
    }[error]
    delay, retries_left = plan_retry(exc, 1, 3, settings, random.Random(7))
    # retries_left as the policy leaves it; RQ then takes one off as it schedules the retry.
    assert retries_left == left_after
    assert (delay is None) == (error == "permanent")
    again, _ = plan_retry(exc, 1, 3, settings, random.Random(7))
    assert again == delay  # the jitter comes from the rng it is given


def test_unclaimed_jobs_go_back_to_the_front_of_the_queue_in_their_order(
    store: JobStore, settings: Settings
) -> None:
    """No send slot came in time: the claimed jobs are the next ones any worker takes."""
    ids = [
        send_email(to=f"u{i}@example.com", subject="s", text="t", connection=store.conn, settings=settings)
        for i in range(3)
    ]
    rows = store.claim(n=2, now=time.time(), execution_prefix="d-", worker="w", grace=30)
    assert [r.job_id for r in rows] == ids[:2]
    store.unclaim([])  # nothing to give back: nothing changes
    store.unclaim(rows)
    assert store.conn.lrange("rq:queue:emails", 0, -1) == [i.encode() for i in ids]
    assert [store.conn.hget(f"rq:job:{i}", "status") for i in ids] == [b"queued"] * 3
    assert store.conn.zcard("rq:wip:emails") == 0


def test_a_claim_stamps_started_at_in_utc_whatever_the_hosts_zone(
    store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RQ reads ``started_at`` as UTC; a host in another zone must not shift it."""
    job_id = send_email(to="a@example.com", subject="s", text="t", connection=store.conn, settings=settings)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        store.claim(n=1, now=0.0, execution_prefix="d-", worker="w", grace=30)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert store.conn.hget(f"rq:job:{job_id}", "started_at") == b"1970-01-01T00:00:00.000000Z"


def test_recovery_and_rejections_tell_the_operator_what_happened(
    store: JobStore, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="emailqueue")
    exhausted = _claim_and_die(store, settings, retries_left=0)
    requeued = _claim_and_die(store, settings, retries_left=2)
    store.recover(now=time.time() + LATER, limit=10, lease=30)
    payload = Payload(
        emails=[{"to": ["a@example.com"]}, {"to": ["b@example.com"]}],
        idempotency_key="emailqueue-eb_x",
        event_id="launch",
        ids=["ed_a", "ed_b"],
        batch=True,
    )
    assert store.record_rejected(payload, {1: "invalid recipient"}) == ["ed_b"]
    messages = [r.getMessage() for r in caplog.records]
    # On its last attempt an abandoned job is held on (it may have been accepted), not failed.
    held, _, delay = messages[0].rpartition(" in ")
    assert held == f"job {exhausted}: abandoned with no attempts left; resent under its key"
    assert delay.endswith("s") and int(delay[:-1]) > 0
    assert messages[1:] == [
        "requeued 1 job(s) abandoned by a dead worker (same idempotency keys)",
        "batch emailqueue-eb_x: 1 recipient(s) rejected by Resend",
    ]
    assert store.conn.hget(f"rq:job:{requeued}", "status") == b"queued"
    assert store.conn.hget(f"rq:job:{exhausted}", "status") == b"scheduled"


def test_the_orphan_sweep_says_what_it_removed(
    store: JobStore, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="emailqueue")
    store.conn.hset("rq:job:em_orphan", mapping={"status": "finished", "origin": "emails"})  # a late write
    assert store.sweep_orphans(count=1000, every_s=600).removed == 1
    assert [r.getMessage() for r in caplog.records] == [
        "orphan sweep: 1 job hash(es) in no registry and with no TTL deleted, 0 requeued"
    ]
    caplog.clear()
    store.conn.delete(store.keys.orphans_gate)
    assert store.sweep_orphans(count=1000, every_s=600).scanned >= 0  # nothing found: nothing said
    assert caplog.records == []


def test_a_job_without_a_recorded_send_has_no_resend_id(store: JobStore) -> None:
    assert store.resend_id("em_never_sent") is None
