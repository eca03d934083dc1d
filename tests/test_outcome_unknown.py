"""An email Resend may have accepted is never recorded as failed while its key can still tell.

Fact (docs/PLATFORM.md, "Resend: idempotency keys"): Resend remembers an Idempotency-Key for
24 h and answers a repeat (same key, same body) with the original reply, sending nothing. So a
send that failed ambiguously (the reply timed out or the connection dropped after the request
went out, a 5xx) is resent under the same key after its attempts ran out, at the backoff cap,
until Resend answers for certain; only when the key's window is closing does it fail, as
``outcome_unknown``. A pack (tests/test_pack.py) and a single job behave the same. The clock is
injected (``wall_clock``): nothing here waits for real time to pass.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue import Settings, drain, queue_status, requeue_failed, send_email
from emailqueue._constants import META_KEY
from emailqueue._exceptions import (
    PermanentSendError,
    QuotaExceededError,
    RetryableSendError,
    SendError,
)
from emailqueue._retry import (
    KEY_WINDOW_MARGIN_S,
    KEY_WINDOW_S,
    LOCAL_RATE_LIMIT,
    OUTCOME_UNKNOWN,
    SEND_GUARD_S,
    hold_on_delay,
    is_ambiguous,
)
from emailqueue.testing import FakeResend
from tests.helpers.rq_helpers import registry_counts, release_scheduled, run_burst

HOUR = 3600.0


def at(t0: float, hours: float) -> Callable[[], float]:
    return lambda: t0 + hours * HOUR


def enqueue(conn: redis.Redis, settings: Settings, n: int, prefix: str = "u") -> list[str]:
    return [
        str(
            send_email(
                to=f"{prefix}{i}@example.com", subject="Hi", text="x", connection=conn, settings=settings
            )
        )
        for i in range(n)
    ]


def record(conn: redis.Redis, job_id: str) -> dict[str, object]:
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    return dict(job.meta[META_KEY])


def failed_count(conn: redis.Redis) -> int:
    return registry_counts(Queue("emails", connection=conn, serializer=JSONSerializer))["failed"]


# --- the policy, as pure functions -------------------------------------------------------------

AMBIGUOUS = [
    RetryableSendError("t", name="timeout"),
    RetryableSendError("n", name="network_error"),
    RetryableSendError("x", status_code=500, name="internal_server_error"),
    RetryableSendError("x", status_code=502, name="http_502"),
    RetryableSendError("c", status_code=409, name="concurrent_idempotent_requests"),
    RetryableSendError("b", name="bad_reply"),
    RetryableSendError("i", name="internal_error"),
]
DEFINITE = [
    RetryableSendError("r", status_code=429, name="rate_limit_exceeded"),
    RetryableSendError("r", status_code=408, name="request_timeout"),
    QuotaExceededError("q", status_code=429, name="daily_quota_exceeded"),
    RetryableSendError("l", name=LOCAL_RATE_LIMIT),
    RetryableSendError("c", name="connect_error"),
    RetryableSendError("c", name="connect_timeout"),
    PermanentSendError("v", status_code=422, name="validation_error"),
]


@pytest.mark.parametrize("exc", AMBIGUOUS, ids=[e.name for e in AMBIGUOUS])
def test_a_failure_after_the_request_went_out_is_ambiguous(exc: SendError) -> None:
    assert is_ambiguous(exc)


@pytest.mark.parametrize("exc", DEFINITE, ids=[e.name for e in DEFINITE])
def test_a_refusal_or_a_request_that_never_left_is_definite(exc: SendError) -> None:
    assert not is_ambiguous(exc)


def test_hold_on_waits_at_the_cap_and_never_past_the_window(settings: Settings) -> None:
    exc = RetryableSendError("t", name="timeout")
    deadline = KEY_WINDOW_S - KEY_WINDOW_MARGIN_S
    rng = random.Random(0)
    waits = [
        hold_on_delay(exc, attempts=20, since=0, now=HOUR, settings=settings, rng=rng) for _ in range(50)
    ]
    cap = settings.email_backoff_cap_s
    assert all(w is not None and cap / 2 <= w <= cap for w in waits)
    assert hold_on_delay(exc, attempts=20, since=0, now=deadline - 100, settings=settings) == 100
    assert hold_on_delay(exc, attempts=20, since=0, now=deadline, settings=settings) is None
    permanent = PermanentSendError("v", status_code=422, name="validation_error")
    assert hold_on_delay(permanent, attempts=20, since=0, now=HOUR, settings=settings) is None


# --- packs ---------------------------------------------------------------------------------------


@pytest.fixture
def psettings(settings: Settings) -> Settings:
    """Packing on, and every send is the last attempt: the case the policy is for."""
    return settings.model_copy(update={"email_pack": True, "email_max_attempts": 1})


@pytest.mark.parametrize("fault", ["reply_dropped", "reply_timed_out"])
def test_a_pack_accepted_on_its_last_attempt_without_a_reply_is_resent_not_failed(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend, fault: str
) -> None:
    """Resend accepted the pack, the reply was lost on its last attempt: the pack is not failed
    (it used to fail, and a requeue sent each email again under its own key); the next drain
    resends it under the same key and Resend answers from its cache."""
    t0 = time.time()
    settings = psettings.model_copy(update={"resend_timeout_s": 0.3})
    ids = enqueue(real_conn, settings, 6)
    if fault == "reply_dropped":
        fake_resend.drop_after_accept(1)
    else:
        fake_resend.timeout_after_accept(1, 0.6)
    first = drain(connection=real_conn, settings=settings, wall_clock=at(t0, 0))
    assert (first.sent, first.failed, first.retrying) == (0, 0, 6)
    assert len(fake_resend.accepted) == 6  # Resend has them all
    status = queue_status(real_conn, settings)
    assert (status.failed, status.packs, status.in_packs) == (0, 1, 6)
    # Later drains (virtual hours apart): a 409 while the late reply is still being written is
    # ambiguous too, so the pack is simply resent again at the next one.
    reports = []
    for hours in (1.5, 3, 4.5, 6):
        reports.append(drain(connection=real_conn, settings=settings, wall_clock=at(t0, hours)))
        if reports[-1].sent:
            break
        time.sleep(0.2)  # only while the fake still writes its late reply (reply_timed_out)
    assert sum(r.sent for r in reports) == 6 and sum(r.failed for r in reports) == 0
    assert fake_resend.replays == 1 and len(fake_resend.accepted) == 6
    assert set(fake_resend.accepted_count_by_key().values()) == {1}
    assert len({r.body for r in fake_resend.requests if r.path == "/emails/batch"}) == 1
    assert failed_count(real_conn) == 0 and not real_conn.keys("emailqueue:pack*")
    assert not any(real_conn.exists(f"rq:job:{i}") for i in ids)


def test_a_pack_left_unknown_until_the_window_closes_fails_as_outcome_unknown(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """Accepted with its reply dropped, then every resend ends in a 5xx: the pack is resent
    through the day, and fails only once the key's window is closing, each email as
    ``outcome_unknown`` with a record saying it may have been delivered."""
    t0 = time.time()
    ids = enqueue(real_conn, psettings, 3)
    fake_resend.drop_after_accept(1)
    assert drain(connection=real_conn, settings=psettings, wall_clock=at(t0, 0)).retrying == 3
    fake_resend.fail_next(2, 500, "internal_server_error")
    assert drain(connection=real_conn, settings=psettings, wall_clock=at(t0, 2)).retrying == 3
    assert failed_count(real_conn) == 0
    report = drain(connection=real_conn, settings=psettings, wall_clock=at(t0, 23.5))
    assert (report.failed, report.retrying, report.sent) == (3, 0, 0)
    for job_id in ids:
        error = record(real_conn, job_id)["error"]
        assert isinstance(error, dict) and error["name"] == OUTCOME_UNKNOWN
        assert "may have delivered" in str(error["message"]) and "internal_server_error" in str(
            error["message"]
        )
    assert [r.status for r in fake_resend.requests] == [0, 500, 500]
    assert not real_conn.keys("emailqueue:pack*")


def test_a_pack_never_goes_out_after_the_window_once_its_outcome_was_unknown(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """No drain ran for a day after the ambiguous send: resending now could be sent as new, so it
    is not sent; its emails fail as ``outcome_unknown``."""
    t0 = time.time()
    enqueue(real_conn, psettings, 3)
    fake_resend.drop_after_accept(1)
    drain(connection=real_conn, settings=psettings, wall_clock=at(t0, 0))
    late = t0 + KEY_WINDOW_S - SEND_GUARD_S + 1
    report = drain(connection=real_conn, settings=psettings, wall_clock=lambda: late)
    assert (report.failed, report.sent) == (3, 0)
    assert len(fake_resend.requests) == 1  # nothing sent after the first
    assert failed_count(real_conn) == 3


def test_a_definite_refusal_after_an_ambiguous_send_fails_the_pack_with_resends_reason(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    t0 = time.time()
    ids = enqueue(real_conn, psettings, 2)
    fake_resend.fail_next(1, 500, "internal_server_error")
    assert drain(connection=real_conn, settings=psettings, wall_clock=at(t0, 0)).retrying == 2
    fake_resend.fail_next(1, 403, "invalid_api_key")
    assert drain(connection=real_conn, settings=psettings, wall_clock=at(t0, 2)).failed == 2
    assert {record(real_conn, i)["error"]["name"] for i in ids} == {"invalid_api_key"}  # type: ignore[index]


# --- single jobs ---------------------------------------------------------------------------------


@pytest.fixture
def ssettings(settings: Settings) -> Settings:
    """The single path, every send the last attempt."""
    return settings.model_copy(update={"email_pack": False, "email_max_attempts": 1})


def test_a_single_email_accepted_on_its_last_attempt_without_a_reply_is_resent_not_failed(
    real_conn: redis.Redis, ssettings: Settings, fake_resend: FakeResend
) -> None:
    """The single path had the same hole: a lost reply on the last attempt failed the job
    (``network_error``), though Resend had it. Now the job is retried under its key."""
    t0 = time.time()
    (job_id,) = enqueue(real_conn, ssettings, 1)
    fake_resend.drop_after_accept(1)
    first = drain(connection=real_conn, settings=ssettings, wall_clock=at(t0, 0))
    assert (first.sent, first.failed, first.retrying) == (0, 0, 1)
    kept = record(real_conn, job_id)
    assert kept["maybe_sent"] is True and kept["error"]["name"] == "network_error"  # type: ignore[index]
    second = drain(connection=real_conn, settings=ssettings, wall_clock=at(t0, 2))
    assert (second.promoted, second.sent, second.failed) == (1, 1, 0)
    assert fake_resend.replays == 1 and len(fake_resend.accepted) == 1
    assert not real_conn.exists(f"rq:job:{job_id}")


def test_a_definite_failure_after_an_ambiguous_one_still_holds_on(
    real_conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Attempt 1 ended in a 5xx (Resend may have it), the last one in a 429: that 429 says
    nothing of the first send, so the job is still resent under its key, not failed."""
    t0 = time.time()
    two = settings.model_copy(update={"email_pack": False, "email_max_attempts": 2})
    enqueue(real_conn, two, 1)
    fake_resend.fail_next(1, 500, "internal_server_error")
    fake_resend.fail_next(1, 408, "request_timeout")
    assert drain(connection=real_conn, settings=two, wall_clock=at(t0, 0)).retrying == 1
    assert drain(connection=real_conn, settings=two, wall_clock=at(t0, 1)).retrying == 1
    assert failed_count(real_conn) == 0
    assert drain(connection=real_conn, settings=two, wall_clock=at(t0, 3)).sent == 1


def test_without_an_ambiguous_send_the_last_attempt_fails_as_before(
    real_conn: redis.Redis, ssettings: Settings, fake_resend: FakeResend
) -> None:
    (job_id,) = enqueue(real_conn, ssettings, 1)
    fake_resend.fail_next(1, 408, "request_timeout")
    assert drain(connection=real_conn, settings=ssettings).failed == 1
    assert record(real_conn, job_id)["error"]["name"] == "request_timeout"  # type: ignore[index]
    assert "maybe_sent" not in record(real_conn, job_id)


def test_a_single_email_left_unknown_until_the_window_closes_fails_as_outcome_unknown(
    real_conn: redis.Redis, ssettings: Settings, fake_resend: FakeResend
) -> None:
    t0 = time.time()
    (job_id,) = enqueue(real_conn, ssettings, 1)
    fake_resend.drop_after_accept(1)
    assert drain(connection=real_conn, settings=ssettings, wall_clock=at(t0, 0)).retrying == 1
    fake_resend.fail_next(1, 500, "internal_server_error")
    report = drain(connection=real_conn, settings=ssettings, wall_clock=at(t0, 23.5))
    assert (report.promoted, report.failed, report.sent) == (1, 1, 0)
    error = record(real_conn, job_id)["error"]
    assert isinstance(error, dict) and error["name"] == OUTCOME_UNKNOWN
    assert "may have delivered" in str(error["message"])
    # A requeue is the operator's call, made with force: it may send the email twice
    # (tests/test_requeue_outcome_unknown.py).
    assert requeue_failed(real_conn, ssettings, [job_id]).needs_force == [job_id]
    assert requeue_failed(real_conn, ssettings, [job_id], force=True).requeued == [job_id]


def test_a_single_email_is_never_sent_after_the_window_once_its_outcome_was_unknown(
    real_conn: redis.Redis, ssettings: Settings, fake_resend: FakeResend
) -> None:
    t0 = time.time()
    (job_id,) = enqueue(real_conn, ssettings, 1)
    fake_resend.drop_after_accept(1)
    drain(connection=real_conn, settings=ssettings, wall_clock=at(t0, 0))
    late = t0 + KEY_WINDOW_S - SEND_GUARD_S + 1
    report = drain(connection=real_conn, settings=ssettings, wall_clock=lambda: late)
    assert (report.failed, report.sent) == (1, 0) and len(fake_resend.requests) == 1
    assert record(real_conn, job_id)["error"]["name"] == OUTCOME_UNKNOWN  # type: ignore[index]


# --- a VM worker (RQ runs the job) ---------------------------------------------------------------


@pytest.fixture
def vm(real_conn: redis.Redis, ssettings: Settings) -> Iterator[Queue]:
    from emailqueue import configure_worker

    configure_worker(ssettings)
    yield Queue("emails", connection=real_conn, serializer=JSONSerializer)
    configure_worker()


def test_under_a_vm_worker_a_lost_reply_on_the_last_attempt_is_retried_not_failed(
    vm: Queue, ssettings: Settings, fake_resend: FakeResend
) -> None:
    enqueue(vm.connection, ssettings, 1)
    fake_resend.drop_after_accept(1)
    run_burst(vm)
    assert registry_counts(vm) == {"queued": 0, "started": 0, "scheduled": 1, "failed": 0}
    release_scheduled(vm)
    run_burst(vm)
    assert fake_resend.replays == 1 and len(fake_resend.accepted) == 1
    assert registry_counts(vm) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}


def test_under_a_vm_worker_an_unknown_send_is_never_repeated_after_the_window(
    vm: Queue, ssettings: Settings, fake_resend: FakeResend
) -> None:
    (job_id,) = enqueue(vm.connection, ssettings, 1)
    fake_resend.drop_after_accept(1)
    run_burst(vm)
    # A day later (RQ's clock cannot be moved: the job's creation is moved back instead).
    created = (datetime.now(UTC) - timedelta(seconds=KEY_WINDOW_S)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    vm.connection.hset(f"rq:job:{job_id}", "created_at", created)
    release_scheduled(vm)
    run_burst(vm)
    assert len(fake_resend.requests) == 1
    assert registry_counts(vm)["failed"] == 1
    error = json.loads(vm.connection.hget(f"rq:job:{job_id}", "meta") or b"{}")[META_KEY]["error"]
    assert error["name"] == OUTCOME_UNKNOWN
