"""Delivery through RQ's stock SimpleWorker against the local fake Resend, on both tiers.

Retries are asserted by *when* RQ scheduled them, then released at once: no test sleeps until
a retry is due.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from emailqueue import Settings, configure_worker, send_email, send_event_email
from emailqueue._constants import META_KEY
from emailqueue.testing import FakeResend
from tests.helpers.rq_helpers import (
    registry_counts,
    release_scheduled,
    run_burst,
    run_until_settled,
    scheduled_times,
)


@pytest.fixture(autouse=True)
def worker_runtime(settings: Settings) -> Iterator[None]:
    configure_worker(settings)
    yield
    configure_worker()


def job_keys(conn: redis.Redis) -> list[bytes]:
    return list(conn.scan_iter(match="rq:job:*"))


def test_success_sends_once_with_key_and_user_agent_and_leaves_no_job(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = send_email(to="ada@example.com", subject="Hi", html="<b>x</b>", queue=queue, settings=settings)
    run_burst(queue)
    (email,) = fake_resend.accepted
    assert email.to == ["ada@example.com"]
    assert email.idempotency_key == f"emailqueue-{job_id}"
    assert email.headers["user-agent"].startswith("emailqueue/")
    assert email.payload["from"] == "App <app@example.com>"
    assert registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}
    assert job_keys(queue.connection) == []


def test_three_500s_then_delivered_exactly_once(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.fail_next(3, 500, "internal_server_error")
    send_email(to="ada@example.com", subject="Hi", text="x", queue=queue, settings=settings)
    run_until_settled(queue)
    assert len(fake_resend.accepted) == 1
    assert [r.status for r in fake_resend.requests] == [500, 500, 500, 200]
    assert len({r.headers["idempotency-key"] for r in fake_resend.requests}) == 1
    assert job_keys(queue.connection) == []


def test_429_retry_after_schedules_no_sooner(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    # docs/PLATFORM.md "Resend": a 429 carries retry-after; a larger retry-after beats our backoff.
    slow = settings.model_copy(update={"email_backoff_base_s": 1.0, "email_backoff_cap_s": 1.0})
    configure_worker(slow)
    fake_resend.fail_next(1, 429, "rate_limit_exceeded", retry_after=2)
    job_id = send_email(to="ada@example.com", subject="Hi", text="x", queue=queue, settings=slow)
    before = time.time()
    run_burst(queue)
    when = scheduled_times(queue)[job_id]
    assert when >= before + 2
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    assert job.meta[META_KEY]["error"]["name"] == "rate_limit_exceeded"
    assert job.retries_left == settings.email_max_attempts - 2
    release_scheduled(queue)
    run_burst(queue)
    assert len(fake_resend.accepted) == 1


def test_backoff_grows_between_attempts(queue: Queue, settings: Settings, fake_resend: FakeResend) -> None:
    fake_resend.fail_next(2, 503, "service_unavailable")
    job_id = send_email(to="ada@example.com", subject="Hi", text="x", queue=queue, settings=settings)
    windows = []
    for _ in range(2):
        start = time.time()
        run_burst(queue)
        end = time.time()
        # RQ schedules from its own clock, somewhere in [start, end]: the window the delay
        # allows, however long the run took.
        when = scheduled_times(queue)[job_id]
        windows.append((when - end, when - start))
        release_scheduled(queue)
    # base 10 s with equal jitter: first in [5, 10], second in [10, 20] (RQ rounds up a second)
    assert windows[0][1] >= 5 and windows[0][0] <= 11
    assert windows[1][1] >= 10 and windows[1][0] <= 21


def test_422_fails_after_one_attempt_with_error_visible(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.fail_next(1, 422, "validation_error", "The `to` field is invalid")
    job_id = send_email(to="ada@example.com", subject="Hi", text="x", queue=queue, settings=settings)
    run_burst(queue)
    assert len(fake_resend.requests) == 1
    assert registry_counts(queue)["failed"] == 1
    assert registry_counts(queue)["scheduled"] == 0
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    assert job.meta[META_KEY]["error"] == {
        "name": "validation_error",
        "message": "The `to` field is invalid",
        "status_code": 422,
    }
    assert job.meta[META_KEY]["attempts"] == 1
    assert job_id in FailedJobRegistry(queue=queue).get_job_ids()
    assert job.failure_ttl == settings.email_failure_ttl_s


def test_attempts_are_bounded_then_job_is_kept_in_failed(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    """Definite failures (here 408: Resend did not process the request) spend the attempts, then
    the job fails. An ambiguous one (a 5xx, a timeout) is held on instead: tests/test_unknown.py."""
    fake_resend.fail_next(100, 408, "request_timeout")
    job_id = send_email(to="ada@example.com", subject="Hi", text="x", queue=queue, settings=settings)
    run_until_settled(queue)
    assert len(fake_resend.requests) == settings.email_max_attempts
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    assert job.meta[META_KEY]["attempts"] == settings.email_max_attempts
    assert registry_counts(queue)["failed"] == 1


def test_timeout_after_accept_retry_reuses_key_and_sends_once(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    fast = settings.model_copy(update={"resend_timeout_s": 0.3})
    configure_worker(fast)
    fake_resend.timeout_after_accept(1, delay=1.0)
    send_email(to="ada@example.com", subject="Hi", text="x", queue=queue, settings=fast)
    run_burst(queue)
    assert len(fake_resend.accepted) == 1  # Resend got it; our client timed out
    assert registry_counts(queue)["scheduled"] == 1
    # Let the fake finish its late reply; retrying while it is in flight gets a (retryable) 409.
    deadline = time.monotonic() + 5
    while not fake_resend.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    release_scheduled(queue)
    run_burst(queue)
    assert len(fake_resend.accepted) == 1
    assert fake_resend.replays == 1
    assert job_keys(queue.connection) == []


def test_monthly_quota_waits_without_spending_attempts(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.fail_next(settings.email_max_attempts + 2, 429, "monthly_quota_exceeded")
    job_id = send_email(to="ada@example.com", subject="Hi", text="x", queue=queue, settings=settings)
    start = time.time()
    for _ in range(settings.email_max_attempts + 2):
        run_burst(queue)
        assert scheduled_times(queue)[job_id] >= start + settings.email_quota_retry_s / 2
        release_scheduled(queue)
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    assert job.retries_left == settings.email_max_attempts - 1  # nothing spent
    run_burst(queue)
    assert len(fake_resend.accepted) == 1
    assert registry_counts(queue)["failed"] == 0


def test_event_email_twice_sends_each_recipient_once(
    queue: Queue, settings: Settings, fake_resend: FakeResend
) -> None:
    people = [f"p{i}@example.com" for i in range(5)]
    send_event_email("launch", people, "Launch", text="x", queue=queue, settings=settings)
    run_burst(queue)
    assert send_event_email("launch", people, "Launch", text="x", queue=queue, settings=settings) == []
    run_burst(queue)
    assert sorted(e.to[0] for e in fake_resend.accepted) == people


def test_malformed_payload_fails_alone(queue: Queue, settings: Settings, fake_resend: FakeResend) -> None:
    bad = queue.enqueue_call(func="emailqueue._jobs.deliver", kwargs={"payload": {"v": 99}}, result_ttl=0)
    send_email(to="ada@example.com", subject="Hi", text="x", queue=queue, settings=settings)
    run_burst(queue)
    assert len(fake_resend.accepted) == 1
    job = Job.fetch(bad.id, connection=queue.connection, serializer=JSONSerializer)
    assert job.meta[META_KEY]["error"]["name"] == "bad_payload"
    assert registry_counts(queue)["failed"] == 1
