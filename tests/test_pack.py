"""Packing (issue 13): queued single emails go out up to 100 per ``POST /emails/batch``, exactly once.

Facts (docs/PLATFORM.md, "Resend: batch" and "Resend: idempotency keys"): the batch endpoint
takes 1-100 different emails, refuses ``attachments`` and ``scheduled_at``; in permissive mode
it sends the valid ones and lists each rejected index with its message; a reused Idempotency-Key
with a different body is refused with 409 ``invalid_idempotent_request``, the same body is
answered from the cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from emailqueue import Settings, drain, send_email
from emailqueue._constants import META_KEY
from emailqueue._exceptions import PermanentSendError
from emailqueue._resend import ResendClient
from emailqueue._store import JobStore
from emailqueue.testing import FakeResend
from tests.helpers.rq_helpers import registry_counts

LATER = 3600.0


def later_clock() -> float:
    return time.time() + LATER


@pytest.fixture
def psettings(settings: Settings) -> Settings:
    return settings.model_copy(update={"email_pack": True})


def enqueue(conn: redis.Redis, settings: Settings, n: int, prefix: str = "u") -> list[str]:
    return [
        str(
            send_email(
                to=f"{prefix}{i}@example.com", subject="Hi", text="x", connection=conn, settings=settings
            )
        )
        for i in range(n)
    ]


def pack_number(key: str) -> int:
    """The pack's number in its claim, from its key ``emailqueue-pack-<exec>-<req>-<n>x<emails>``."""
    return int(key.rsplit("-", 1)[1].split("x")[0])


def batch_requests(fake: FakeResend) -> list[list[dict[str, object]]]:
    return [json.loads(r.body) for r in fake.requests if r.path == "/emails/batch" and r.status == 200]


def no_jobs_left(conn: redis.Redis) -> bool:
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    pending = registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}
    return pending and not conn.keys("rq:job:*") and not conn.keys("emailqueue:pack*")


@pytest.mark.parametrize("conn", ["fake", "real"], indirect=True)
def test_a_backlog_goes_out_in_packs_of_100_in_queue_order(
    conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """Fact: POST /emails/batch takes up to 100 different emails; permissive mode is asked for."""
    ids = enqueue(conn, psettings, 250)
    report = drain(connection=conn, settings=psettings, max_jobs=10)
    assert (report.sent, report.packs, report.largest_pack, report.processed) == (250, 3, 100, 250)
    # Sent concurrently (no rate limit here): in the packs' order, they hold the queue's order.
    sent = sorted(
        (pack_number(r.headers["idempotency-key"]), json.loads(r.body)) for r in fake_resend.requests
    )
    bodies = [body for _, body in sent]
    assert [len(b) for b in bodies] == [100, 100, 50]
    assert [e["to"] for b in bodies for e in b] == [[f"u{i}@example.com"] for i in range(250)]
    assert all(r.headers["x-batch-validation"] == "permissive" for r in fake_resend.requests)
    assert len({r.headers["idempotency-key"] for r in fake_resend.requests}) == 3
    # Each email's Resend id is kept against its job (the job itself is deleted).
    store = JobStore(conn, "emails", psettings)
    by_index = {(e.idempotency_key, e.batch_index): e.id for e in fake_resend.accepted}
    first = next(k for k, _ in by_index if k and pack_number(k) == 1)
    assert store.resend_id(ids[0]) == by_index[(first, 0)]
    assert store.resend_id(ids[99]) == by_index[(first, 99)]
    assert no_jobs_left(conn)


@pytest.mark.parametrize("conn", ["fake", "real"], indirect=True)
def test_max_jobs_counts_a_pack_as_one_request(
    conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    enqueue(conn, psettings, 150)
    report = drain(connection=conn, settings=psettings, max_jobs=1)
    assert (report.sent, report.packs, report.remaining, report.stopped) == (100, 1, 50, "max_jobs")
    assert (report.requests, report.processed, len(fake_resend.requests)) == (1, 100, 1)


def test_emails_the_batch_endpoint_refuses_keep_the_single_path(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """Fact: the batch endpoint refuses ``attachments`` and ``scheduled_at``."""
    plain = enqueue(real_conn, psettings, 3)
    attached = send_email(
        to="a@example.com",
        subject="File",
        text="x",
        attachments=[{"filename": "a.txt", "content": "eA=="}],
        connection=real_conn,
        settings=psettings,
    )
    later = send_email(
        to="b@example.com",
        subject="Later",
        text="x",
        send_at=datetime.now(UTC) + timedelta(hours=1),
        connection=real_conn,
        settings=psettings,
    )
    report = drain(connection=real_conn, settings=psettings)
    assert (report.sent, report.packs) == (5, 1)
    singles = {r.headers["idempotency-key"] for r in fake_resend.requests if r.path == "/emails"}
    assert singles == {f"emailqueue-{attached}", f"emailqueue-{later}"}
    assert [len(b) for b in batch_requests(fake_resend)] == [len(plain)]
    assert all(r.status == 200 for r in fake_resend.requests)


def test_a_lone_queued_email_goes_the_single_way(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """Packing takes what is queued now and never waits: one email is sent alone, at once."""
    (job_id,) = enqueue(real_conn, psettings, 1)
    report = drain(connection=real_conn, settings=psettings)
    assert (report.sent, report.packs, report.requests) == (1, 0, 1)
    assert [r.path for r in fake_resend.requests] == ["/emails"]
    assert fake_resend.accepted[0].idempotency_key == f"emailqueue-{job_id}"
    assert no_jobs_left(real_conn)


def test_email_pack_false_sends_every_email_alone(
    real_conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    ids = enqueue(real_conn, settings, 5)
    report = drain(connection=real_conn, settings=settings.model_copy(update={"email_pack": False}))
    assert (report.sent, report.packs) == (5, 0)
    assert sorted(e.idempotency_key or "" for e in fake_resend.accepted) == sorted(
        f"emailqueue-{i}" for i in ids
    )


def test_a_rejected_email_fails_alone_with_resends_message(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """Fact: in permissive mode Resend sends the valid emails of a batch and lists each rejected
    index with its message; the rejected email becomes a failed job of its own."""
    ids = enqueue(real_conn, psettings, 5)
    fake_resend.reject_recipients = {"u2@example.com"}
    report = drain(connection=real_conn, settings=psettings)
    assert (report.sent, report.failed, report.packs) == (4, 1, 1)
    queue = Queue("emails", connection=real_conn, serializer=JSONSerializer)
    assert registry_counts(queue)["failed"] == 1
    job = queue.fetch_job(ids[2])
    assert job is not None and job.get_status() == "failed"
    error = job.meta[META_KEY]["error"]
    assert error["name"] == "rejected_recipient" and error["status_code"] == 422 and error["message"]
    assert len(fake_resend.accepted) == 4 and all(
        real_conn.exists(f"rq:job:{i}") == 0 for i in ids if i != ids[2]
    )


def test_fact_a_different_body_under_a_used_key_is_refused_with_409(fake_resend: FakeResend) -> None:
    """Fact: Resend refuses a reused Idempotency-Key with a different body (409
    ``invalid_idempotent_request``) and replays the original reply for the same body. This is why
    a pack's exact body is stored before its first request."""
    client = ResendClient(httpx.Client(), api_key=fake_resend.api_key, base_url=fake_resend.url)
    emails = [{"from": "a@example.com", "to": ["x@example.com"], "subject": "s", "text": "t"}]
    first = client.send_batch(emails, idempotency_key="emailqueue-pack-k")
    assert client.send_batch(emails, idempotency_key="emailqueue-pack-k") == first
    assert fake_resend.replays == 1
    with pytest.raises(PermanentSendError) as refused:
        client.send_batch(
            [*emails, {**emails[0], "to": ["y@example.com"]}], idempotency_key="emailqueue-pack-k"
        )
    assert (refused.value.status_code, refused.value.name) == (409, "invalid_idempotent_request")
    client.close()


def test_a_timed_out_pack_is_resent_identically_under_the_same_key(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """Resend accepted the pack but the reply came too late: the retry sends the stored body
    under the same key, and Resend answers it from its cache (no 409, nothing sent twice)."""
    settings = psettings.model_copy(update={"resend_timeout_s": 0.3, "email_backoff_base_s": 1})
    ids = enqueue(real_conn, settings, 7)
    fake_resend.timeout_after_accept(1, 1.0)
    first = drain(connection=real_conn, settings=settings)
    assert (first.sent, first.retrying) == (0, 7)
    time.sleep(0.8)  # Resend finishes the request it timed out on (no real retry comes back sooner)
    second = drain(connection=real_conn, settings=settings, wall_clock=later_clock)
    assert (second.sent, second.packs) == (7, 1)
    bodies = [r.body for r in fake_resend.requests if r.path == "/emails/batch"]
    keys = [r.headers["idempotency-key"] for r in fake_resend.requests]
    assert len(bodies) == 2 and bodies[0] == bodies[1] and keys[0] == keys[1]
    assert [r.status for r in fake_resend.requests] == [200, 200] and fake_resend.replays == 1
    assert fake_resend.accepted_count_by_key() == {keys[0]: 1} and len(fake_resend.accepted) == 7
    # recorded on its lifecycle at the second drain's (virtual) time
    assert JobStore(real_conn, "emails", settings, wall_clock=later_clock).resend_id(ids[0]) is not None
    assert no_jobs_left(real_conn)


def test_a_pack_whose_drain_died_after_the_claim_is_recovered_as_a_unit(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """The claim wrote the pack, then the drain died before any request: a later drain (past the
    claim's lease) sends exactly those jobs, in that order, under the pack's key."""
    ids = enqueue(real_conn, psettings, 6)
    store = JobStore(real_conn, "emails", psettings)
    singles, packs = store.pack_claim(
        units=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30, lease=90, size=100
    )
    assert singles == [] and [p.ids for p in packs] == [ids]
    enqueue(real_conn, psettings, 2, prefix="new")
    assert drain(connection=real_conn, settings=psettings).sent == 2  # the dead drain's pack is not due
    report = drain(connection=real_conn, settings=psettings, wall_clock=later_clock)
    assert (report.sent, report.packs) == (6, 1)
    last = fake_resend.requests[-1]
    assert last.headers["idempotency-key"] == packs[0].key
    assert [e["to"] for e in json.loads(last.body)] == [[f"u{i}@example.com"] for i in range(6)]
    assert no_jobs_left(real_conn)


def test_a_pack_whose_drain_died_mid_send_is_held_on_when_its_later_sends_fail_definitely(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """The dead drain's request may have been accepted. The pack's later sends all get a definite
    408 until its attempts run out: its jobs are not failed with that error but held on under
    the pack's key (it was taken as one Resend may have), then sent through when Resend answers."""
    settings = psettings.model_copy(update={"email_max_attempts": 1})
    enqueue(real_conn, settings, 3)
    store = JobStore(real_conn, "emails", settings)
    _, (pack,) = store.pack_claim(
        units=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30, lease=90, size=100
    )
    store.pack_sending({pack.pack_id: ""})  # the dead drain was about to send it
    fake_resend.fail_next(1, 408, "request_timeout")
    report = drain(connection=real_conn, settings=settings, wall_clock=later_clock)
    assert (report.failed, report.sent, report.retrying) == (0, 0, 3)
    assert real_conn.hget(store.pack_keys.pack_prefix + pack.pack_id, "unknown") == b"1"
    report = drain(connection=real_conn, settings=settings, wall_clock=lambda: later_clock() + 10_000)
    assert (report.failed, report.sent) == (0, 3)
    assert {r.headers["idempotency-key"] for r in fake_resend.requests} == {pack.key}
    assert no_jobs_left(real_conn)


def test_a_job_attempted_under_its_own_key_is_never_packed(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """A job whose drain died mid-send may have reached Resend under its own key: after recovery
    it goes the single way with that key, never into a pack under a new one."""
    (dead,) = enqueue(real_conn, psettings, 1, prefix="dead")
    JobStore(real_conn, "emails", psettings).claim(
        n=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30
    )
    fresh = enqueue(real_conn, psettings, 3)
    drain(connection=real_conn, settings=psettings)
    report = drain(connection=real_conn, settings=psettings, wall_clock=later_clock)
    assert report.recovered == 1 and report.sent == 1
    singles = [r.headers["idempotency-key"] for r in fake_resend.requests if r.path == "/emails"]
    assert singles == [f"emailqueue-{dead}"]
    assert [len(b) for b in batch_requests(fake_resend)] == [len(fresh)]


def test_a_pack_that_keeps_failing_fails_every_job_with_the_reason(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """Definite failures (408: Resend did not process the request) spend the pack's attempts, then
    fail its jobs. An ambiguous one (a 5xx, a timeout) is held on instead: tests/test_unknown.py."""
    settings = psettings.model_copy(update={"email_max_attempts": 2})
    ids = enqueue(real_conn, settings, 3)
    fake_resend.fail_next(2, 408, "request_timeout")
    assert drain(connection=real_conn, settings=settings).retrying == 3
    report = drain(connection=real_conn, settings=settings, wall_clock=later_clock)
    assert (report.failed, report.sent) == (3, 0)
    queue = Queue("emails", connection=real_conn, serializer=JSONSerializer)
    assert registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 3}
    keys = {r.headers["idempotency-key"] for r in fake_resend.requests}
    assert len(keys) == 1 and len(fake_resend.requests) == 2  # retried as a unit, same key
    for job_id in ids:
        job = queue.fetch_job(job_id)
        assert job is not None and job.meta[META_KEY]["error"]["name"] == "request_timeout"
    assert not real_conn.keys("emailqueue:pack*")


def _drain_process(redis_url: str, fake: FakeResend) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "QUEUE_REDIS_URL": redis_url,
        "RESEND_API_KEY": fake.api_key,
        "RESEND_API_URL": fake.url,
        "RESEND_RATE_LIMIT": "0",
        "RESEND_TIMEOUT_S": "30",
        "EMAIL_PACK": "true",
    }
    return subprocess.Popen(
        [sys.executable, "-c", "import emailqueue; print(emailqueue.drain().to_dict())"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_of_a_packing_drain_mid_request_sends_the_pack_once(
    real_conn: redis.Redis, redis_url: str, psettings: Settings, fake_resend: FakeResend
) -> None:
    """A real drain process is SIGKILLed while its pack is at Resend (which then accepts it): a
    later drain resends the same body under the same key; every email arrives once."""
    enqueue(real_conn, psettings, 5)
    gate = fake_resend.hold()
    proc = _drain_process(redis_url, fake_resend)
    try:
        assert gate.arrived.wait(20), "the drain never reached Resend"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        gate.release()
    assert real_conn.zcard("emailqueue:packs:emails") == 1  # the pack is left behind
    for _ in range(5):
        drain(connection=real_conn, settings=psettings, wall_clock=later_clock)
        if no_jobs_left(real_conn):
            break
    assert no_jobs_left(real_conn)
    (key,) = fake_resend.accepted_count_by_key()
    assert fake_resend.accepted_count_by_key() == {key: 1} and fake_resend.replays == 1
    assert sorted(str(e.payload["to"]) for e in fake_resend.accepted) == sorted(
        str([f"u{i}@example.com"]) for i in range(5)
    )
    bodies = {r.body for r in fake_resend.requests}
    assert len(bodies) == 1  # the identical body both times


def test_the_orphan_sweep_leaves_the_jobs_of_an_in_flight_pack_alone(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """A packed job is queued but in no RQ list while its pack is in flight, on purpose. The
    orphan sweep (issue 15) must not requeue it: that would send it again under its own key, which
    Resend cannot match with the pack's. Each email is accepted once, by the pack."""
    ids = enqueue(real_conn, psettings, 4)
    store = JobStore(real_conn, "emails", psettings)
    _, packs = store.pack_claim(
        units=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30, lease=90, size=100
    )
    assert [p.ids for p in packs] == [ids]
    real_conn.delete(store.keys.orphans_gate)  # the sweep's period has passed
    swept = store.sweep_orphans(count=1000, every_s=600)
    assert (swept.removed, swept.requeued) == (0, 0)
    assert real_conn.llen(store.keys.queue) == 0
    report = drain(connection=real_conn, settings=psettings, wall_clock=later_clock)
    assert (report.sent, report.packs) == (4, 1)
    assert sorted(e.to[0] for e in fake_resend.accepted) == sorted(f"u{i}@example.com" for i in range(4))
    assert no_jobs_left(real_conn)
