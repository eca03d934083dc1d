"""Queue status, requeue and health as library calls, on both tiers (fakeredis and a real server)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import zlib

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from emailqueue import QueueError, Settings, drain, health, queue_status, requeue_failed, send_email
from emailqueue._connection import connect
from emailqueue._constants import META_KEY
from emailqueue.testing import FakeResend
from tests.helpers.redis_stats import CommandCounter
from tests.helpers.rq_helpers import run_burst

BODY_HTML = "<p>secret-html-body</p>"
BODY_TEXT = "secret-text-body"


def enqueue(conn: redis.Redis, settings: Settings, to: str = "ada@example.com", subject: str = "Hi") -> str:
    return send_email(
        to=to, subject=subject, html=BODY_HTML, text=BODY_TEXT, connection=conn, settings=settings
    )


def fail_permanently(
    conn: redis.Redis, settings: Settings, fake: FakeResend, to: str = "ada@example.com"
) -> str:
    """Queue one email and let a drain fail it for good (422, as Resend rejects a bad message)."""
    job_id = enqueue(conn, settings, to=to)
    fake.fail_next(1, 422, "validation_error", f"bad to {to}")
    report = drain(connection=conn, settings=settings)
    assert report.failed == 1
    return job_id


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://:sentinel-pw@127.0.0.1:{port}/0"


def test_empty_queue(conn: redis.Redis, settings: Settings) -> None:
    status = queue_status(conn, settings)
    assert status.to_dict() == {
        "queue": "emails",
        "queued": 0,
        "started": 0,
        "scheduled": 0,
        "failed": 0,
        "oldest_queued_age_s": None,
        "workers": [],
        "recent_failed": [],
        "orphans_removed": 0,
        "orphans_requeued": 0,
        "packs": 0,
        "in_packs": 0,
    }


def test_counts_queued_jobs_and_the_age_of_the_oldest(conn: redis.Redis, settings: Settings) -> None:
    before = time.time()
    for i in range(3):
        enqueue(conn, settings, to=f"u{i}@example.com")
    now = time.time() + 60
    status = queue_status(conn, settings, now=now)
    assert (status.queued, status.started, status.scheduled, status.failed) == (3, 0, 0, 0)
    # The oldest was enqueued between `before` and now - 60, whatever the writes took.
    assert status.oldest_queued_age_s is not None
    assert 60 - 1 <= status.oldest_queued_age_s <= now - before + 1  # a second of slack: rounding


def test_a_retry_waiting_counts_as_scheduled(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    enqueue(conn, settings)
    fake_resend.fail_next(1, 500, "internal_server_error")
    assert drain(connection=conn, settings=settings).retrying == 1
    status = queue_status(conn, settings)
    assert (status.queued, status.scheduled, status.failed) == (0, 1, 0)


def test_a_send_in_flight_counts_as_started(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    enqueue(conn, settings)
    gate = fake_resend.hold()
    worker = threading.Thread(target=drain, kwargs={"connection": conn, "settings": settings})
    worker.start()
    try:
        assert fake_resend.held.wait(10)
        status = queue_status(conn, settings)
        assert (status.queued, status.started) == (0, 1)
    finally:
        gate.release()
        worker.join(10)
    assert queue_status(conn, settings).started == 0
    assert len(fake_resend.accepted) == 1


def test_a_pack_in_flight_counts_its_emails_in_packs(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """While a pack is at Resend its jobs are in no RQ list: only ``packs``/``in_packs`` show them."""
    packing = settings.model_copy(update={"email_pack": True})
    for i in range(5):
        enqueue(conn, packing, to=f"p{i}@example.com")
    gate = fake_resend.hold()
    worker = threading.Thread(target=drain, kwargs={"connection": conn, "settings": packing})
    worker.start()
    try:
        assert fake_resend.held.wait(10)
        status = queue_status(conn, packing)
        assert (status.queued, status.started, status.scheduled, status.failed) == (0, 0, 0, 0)
        assert (status.packs, status.in_packs) == (1, 5)
    finally:
        gate.release()
        worker.join(10)
    assert (queue_status(conn, packing).packs, queue_status(conn, packing).in_packs) == (0, 0)
    assert len(fake_resend.accepted) == 5


def test_packs_waiting_for_their_retry_count_too(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    packing = settings.model_copy(update={"email_pack": True, "drain_concurrency": 3})
    for i in range(250):
        enqueue(conn, packing, to=f"r{i}@example.com")
    fake_resend.fail_next(3, 500, "internal_server_error")
    assert drain(connection=conn, settings=packing).retrying == 250
    status = queue_status(conn, packing)
    assert (status.queued, status.scheduled, status.packs, status.in_packs) == (0, 0, 3, 250)


def test_status_costs_the_same_commands_for_one_pack_or_many(
    real_conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Upstash bills per command: the packs cost one ZRANGE, however many there are."""
    packing = settings.model_copy(update={"email_pack": True, "drain_concurrency": 8})
    costs = []
    for emails in (2, 700):
        real_conn.flushdb()
        for i in range(emails):
            enqueue(real_conn, packing, to=f"c{i}@example.com")
        fake_resend.fail_next(8, 500, "internal_server_error")
        drain(connection=real_conn, settings=packing)
        real_conn.ping()
        with CommandCounter(real_conn) as counted:
            status = queue_status(real_conn, packing)
        assert status.in_packs == emails
        costs.append(counted.total)
    assert costs[0] == costs[1], costs


def test_a_failed_job_shows_masked_recipient_error_and_attempts(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = fail_permanently(conn, settings, fake_resend)
    status = queue_status(conn, settings)
    assert status.failed == 1
    (entry,) = status.to_dict()["recent_failed"]
    assert entry["id"] == job_id
    assert entry["to"] == ["a***@example.com"]
    assert entry["subject"] == "Hi"
    assert entry["error"] == {
        "name": "validation_error",
        "message": "bad to a***@example.com",
        "status_code": 422,
    }
    assert entry["attempts"] == 1
    assert entry["failed_at"]
    text = json.dumps(status.to_dict())
    for secret in ("ada@example.com", "secret-html-body", BODY_TEXT, fake_resend.api_key):
        assert secret not in text


LEAKY_REASON = (
    "lost redis://:hunter2pw@cache.example.net:6379 sending to bob@example.com with re_live_123456789"
)


def assert_scrubbed(message: str) -> None:
    for secret in ("hunter2pw", "re_live_123456789", "bob@example.com"):
        assert secret not in message
    assert "b***@example.com" in message


def test_a_job_a_stock_rq_worker_failed_shows_rqs_reason_scrubbed(
    conn: redis.Redis, settings: Settings
) -> None:
    """No emailqueue record (not even our job): the last line of RQ's traceback, scrubbed."""
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    job = queue.enqueue_call(func="operator.getitem", args=[{}, LEAKY_REASON])
    run_burst(queue)
    (entry,) = queue_status(conn, settings).recent_failed
    assert (entry.id, entry.to, entry.subject, entry.attempts) == (job.id, [], None, None)
    assert entry.error.name == "KeyError"
    assert_scrubbed(entry.error.message)


def test_our_job_failed_by_rq_itself_shows_masked_recipient_and_rqs_reason(
    conn: redis.Redis, settings: Settings
) -> None:
    """As RQ records a failure it handled itself (Job._handle_failure): registry plus result."""
    job_id = enqueue(conn, settings, to="bob@example.com")
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    conn.lrem(queue.key, 0, job_id)
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    trace = f"Traceback (most recent call last):\n  File 'x.py', line 1\nrq.AbandonedJobError: {LEAKY_REASON}"
    with conn.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        FailedJobRegistry(queue=queue).add(job, ttl=600, exc_string=trace, pipeline=pipe)
        Result.create_failure(job, 600, exc_string=trace, pipeline=pipe)
        pipe.execute()
    (entry,) = queue_status(conn, settings).recent_failed
    assert (entry.id, entry.to, entry.subject, entry.attempts) == (job_id, ["b***@example.com"], "Hi", None)
    assert entry.error.name == "AbandonedJobError"
    assert_scrubbed(entry.error.message)


def test_failures_are_listed_most_recent_first_and_limited(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    ids = [fail_permanently(conn, settings, fake_resend, to=f"u{i}@example.com") for i in range(3)]
    # Within one second (RQ scores failures in whole seconds) our failed_at orders them.
    assert [e.id for e in queue_status(conn, settings).recent_failed] == ids[::-1]
    # The limit keeps the latest: as if they had failed a second apart.
    for age, job_id in enumerate(ids[::-1]):
        conn.zincrby("rq:failed:emails", -age, job_id)
    status = queue_status(conn, settings, failed_limit=2)
    assert status.failed == 3
    assert [e.id for e in status.recent_failed] == [ids[2], ids[1]]
    assert queue_status(conn, settings, failed_limit=0).recent_failed == []


def test_failures_past_their_ttl_are_neither_counted_nor_listed(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fail_permanently(conn, settings, fake_resend)
    later = time.time() + settings.email_failure_ttl_s + 10
    status = queue_status(conn, settings, now=later)
    assert (status.failed, status.recent_failed) == (0, [])


def test_workers_show_name_state_heartbeat_and_nothing_else(conn: redis.Redis, settings: Settings) -> None:
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=conn, serializer=JSONSerializer)
    worker.register_birth()  # type: ignore[no-untyped-call]
    worker.set_state("idle")
    conn.sadd("rq:workers:emails", "rq:worker:gone")  # registered, but its hash has expired
    try:
        (info,) = queue_status(conn, settings).to_dict()["workers"]
    finally:
        worker.register_death()  # type: ignore[no-untyped-call]
    assert info["name"] == worker.name
    assert info["state"] == "idle"
    assert info["last_heartbeat"]
    assert info["current_job"] is None
    assert set(info) == {"name", "state", "last_heartbeat", "current_job"}


def test_status_never_runs_rq_registry_cleanup(conn: redis.Redis, settings: Settings) -> None:
    """An abandoned execution stays put: cleanup (SIGALRM callbacks) is the drain's job, not ours."""
    enqueue(conn, settings)
    conn.zadd("rq:wip:emails", {"someone:abc": 1.0})  # long past its deadline
    status = queue_status(conn, settings)
    assert status.started == 1
    assert conn.zscore("rq:wip:emails", "someone:abc") == 1.0
    assert conn.get("rq:clean_registries:emails") is None


def test_status_raises_queue_error_when_redis_is_down(settings: Settings) -> None:
    dead = connect(closed_port_url(), retries=0)
    with pytest.raises(QueueError) as info:
        queue_status(dead, settings)
    assert "sentinel-pw" not in str(info.value)


# --- requeue ---


def test_requeue_by_id_keeps_the_payload_and_gives_full_retries(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = enqueue(conn, settings)
    fake_resend.fail_next(1, 403, "invalid_api_key", "API key is invalid")  # permanent: no retries left
    assert drain(connection=conn, settings=settings).failed == 1
    data_before = conn.hget(f"rq:job:{job_id}", "data")
    assert conn.ttl(f"rq:job:{job_id}") > 0  # RQ's failure TTL

    before = math.floor(time.time())
    report = requeue_failed(conn, settings, [job_id])
    after = time.time()

    assert report.to_dict() == {
        "requeued": [job_id],
        "not_found": [],
        "already_delivered": [],
        "needs_force": [],
        "needs_force_reason": None,
    }
    key = f"rq:job:{job_id}"
    assert conn.hget(key, "status") == b"queued"
    assert int(conn.hget(key, "retries_left") or -1) == settings.email_max_attempts - 1
    assert conn.hget(key, "data") == data_before
    assert conn.ttl(key) == -1  # a queued job must not expire
    assert conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]
    assert conn.zcard("rq:failed:emails") == 0
    record = json.loads(conn.hget(key, "meta") or b"{}")[META_KEY]
    window_from = record.pop("window_from")
    assert before <= window_from <= after, "its key's window starts again at the requeue"
    assert record == {"error": None, "attempts": 0, "requeued": 1, "past_attempts": 1}
    # Full retries again: a transient failure now waits for a retry instead of failing.
    fake_resend.fail_next(1, 500, "internal_server_error")
    assert drain(connection=conn, settings=settings).retrying == 1
    assert queue_status(conn, settings).scheduled == 1


def test_requeued_job_is_delivered_with_its_original_idempotency_key(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = fail_permanently(conn, settings, fake_resend)
    requeue_failed(conn, settings, [job_id])
    report = drain(connection=conn, settings=settings)
    assert (report.sent, report.remaining) == (1, 0)
    (email,) = fake_resend.accepted
    assert email.idempotency_key == "emailqueue-" + job_id
    assert email.to == ["ada@example.com"]


def test_requeue_all_and_unknown_ids(conn: redis.Redis, settings: Settings, fake_resend: FakeResend) -> None:
    ids = [fail_permanently(conn, settings, fake_resend, to=f"u{i}@example.com") for i in range(3)]
    missing = requeue_failed(conn, settings, ["em_nope", ids[0], ids[0]])
    assert missing.to_dict() == {
        "requeued": [ids[0]],
        "not_found": ["em_nope"],
        "already_delivered": [],
        "needs_force": [],
        "needs_force_reason": None,
    }
    rest = requeue_failed(conn, settings)
    assert sorted(rest.requeued) == sorted(ids[1:]) and rest.not_found == []
    assert conn.llen("rq:queue:emails") == 3
    assert requeue_failed(conn, settings).to_dict() == {
        "requeued": [],
        "not_found": [],
        "already_delivered": [],
        "needs_force": [],
        "needs_force_reason": None,
    }


def test_a_failed_entry_whose_job_expired_is_not_found_and_dropped(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = fail_permanently(conn, settings, fake_resend)
    conn.delete(f"rq:job:{job_id}")
    assert requeue_failed(conn, settings, [job_id]).not_found == [job_id]
    assert conn.llen("rq:queue:emails") == 0 and conn.zcard("rq:failed:emails") == 0


def test_two_concurrent_requeues_push_a_job_once(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = fail_permanently(conn, settings, fake_resend)
    barrier = threading.Barrier(2)
    results: list[list[str]] = []

    def requeue() -> None:
        barrier.wait(5)
        results.append(requeue_failed(conn, settings, [job_id]).requeued)

    threads = [threading.Thread(target=requeue) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [[], [job_id]]
    assert conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]


def test_requeue_keeps_other_meta_and_counts_repeated_requeues(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = fail_permanently(conn, settings, fake_resend)
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    job.meta["app"] = {"order": 1042}
    job.save_meta()  # type: ignore[no-untyped-call]
    requeue_failed(conn, settings, [job_id])
    meta = json.loads(conn.hget(f"rq:job:{job_id}", "meta") or b"{}")
    assert meta["app"] == {"order": 1042}
    assert meta[META_KEY]["requeued"] == 1


def test_a_failed_job_without_any_recorded_reason(conn: redis.Redis, settings: Settings) -> None:
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    job = Job.create("os.getcwd", connection=conn, id="foreign", origin="emails", serializer=JSONSerializer)
    job.save()
    conn.hset(job.key, "data", zlib.compress(b"\x80\x04pickle"))
    FailedJobRegistry(queue=queue).add(job, ttl=600, exc_string="")
    (entry,) = queue_status(conn, settings).recent_failed
    assert (entry.id, entry.to, entry.subject) == ("foreign", [], None)
    assert entry.error.name == "unknown_error"


def test_a_failed_batch_job_shows_every_recipient_masked(conn: redis.Redis, settings: Settings) -> None:
    """Payload v2 (one POST /emails/batch for many personal emails): all recipients, masked."""
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    payload = {
        "v": 2,
        "kind": "batch",
        "emails": [
            {"to": ["ada@example.com"], "subject": "Invite", "html": BODY_HTML},
            {"to": "bob@example.com"},
        ],
        "ids": ["ev_a", "ev_b"],
        "idempotency_key": "emailqueue-ev_batch",
        "event_id": "gala",
    }
    job = Job.create(
        "emailqueue._jobs.deliver",
        kwargs={"payload": payload},
        connection=conn,
        id="ev_batch",
        origin="emails",
        serializer=JSONSerializer,
    )
    job.save()
    FailedJobRegistry(queue=queue).add(job, ttl=600, exc_string="")
    (entry,) = queue_status(conn, settings).recent_failed
    assert (entry.to, entry.subject) == (["a***@example.com", "b***@example.com"], "Invite")
    assert "secret-html-body" not in json.dumps(entry.__dict__, default=str)


# --- health ---


def test_health_ok(conn: redis.Redis) -> None:
    result = health(conn)
    assert result.ok and result.latency_ms is not None and result.latency_ms >= 0
    assert result.error is None


def test_health_down_says_so_without_the_url() -> None:
    url = closed_port_url()
    result = health(connect(url, retries=0))
    assert (result.ok, result.latency_ms) == (False, None)
    assert result.error is not None and "ConnectionError" in result.error
    assert url.rsplit(":", 1)[-1].split("/")[0] not in result.error  # not even the port
    assert "sentinel-pw" not in result.error
