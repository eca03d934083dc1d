"""The retry policy's pieces (emailqueue._retry) at their edges, with exact values: the hold-on
delay, the messages an operator reads, and RQ's callback for an abandoned execution under a VM
worker (``apply_abandoned_policy``), called here on an rq ``Job`` the way ``EmailJob`` and
``EmailWorker`` call it (tests/test_abandoned_hold_on.py runs it through RQ's own cleanup).

The jitter is pinned (``LowestJitter``: the low end of the window, so a delay is exactly half
the backoff) and the clock is passed in (``now=``). In-process, on fakeredis.
"""

from __future__ import annotations

import logging
import random
import time

import fakeredis
import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue import RetryableSendError, Settings
from emailqueue._failure import read_record
from emailqueue._retry import (
    ABANDONED,
    KEY_WINDOW_MARGIN_S,
    KEY_WINDOW_S,
    OUTCOME_UNKNOWN,
    SEND_GUARD_S,
    apply_abandoned_policy,
    apply_failure_policy,
    hold_on_delay,
    is_ambiguous,
    outcome_unknown,
    window_closing,
)

#: Seconds after a job's creation at which its key's window is closing: no more resends.
CLOSING = KEY_WINDOW_S - KEY_WINDOW_MARGIN_S
#: What Resend may have done, and what to do about it: every ``outcome_unknown`` message says so.
UNKNOWN_MESSAGE = (
    "Resend may have delivered this email: a send timed out or lost its reply, and no later send "
    "under its Idempotency-Key got a definite answer before the key's 24 h window closed{why}. "
    "Check Resend (dashboard or GET /emails) before requeueing it: a requeue may send it twice."
)
ABANDONED_MESSAGE = "its worker died mid-send, maybe after Resend accepted the email"


class LowestJitter(random.Random):
    """An rng whose jitter is always the low end of the window: the delay is exactly d/2."""

    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.fixture
def fake() -> redis.Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def three(settings: Settings) -> Settings:
    """Three attempts; the backoff (10 s, doubling) is far from its cap, so each attempt's delay
    differs: attempt n waits exactly 10 * 2**(n-1) / 2 s with ``LowestJitter``."""
    return settings.model_copy(
        update={"email_max_attempts": 3, "email_backoff_base_s": 10, "email_backoff_cap_s": 100_000}
    )


def _job(conn: redis.Redis, *, retries_left: int, record: dict[str, object] | None = None) -> Job:
    """A job as RQ holds it when it settles an execution (created now, saved)."""
    job = Job.create("emailqueue._jobs.deliver", kwargs={"payload": {}}, connection=conn, id="em_units")
    job.serializer = JSONSerializer
    job.retries_left = retries_left
    if record is not None:
        job.meta["emailqueue"] = record
    job.save()
    return job


def _created(job: Job) -> float:
    assert job.created_at is not None
    return job.created_at.timestamp()


# --- the pure pieces -----------------------------------------------------------------------------


def test_a_425_too_early_is_a_definite_refusal() -> None:
    """Resend did not process it: no hold-on for it."""
    assert not is_ambiguous(RetryableSendError("too early", status_code=425, name="too_early"))


def test_hold_on_waits_the_backoff_of_its_attempt_drawn_from_the_rng_it_is_given(settings: Settings) -> None:
    timeout = RetryableSendError("t", name="timeout")
    # Attempt 3: 10 * 2**2 = 40 s, the low end of [20, 40].
    assert hold_on_delay(timeout, attempts=3, since=0, now=3600, settings=settings, rng=LowestJitter()) == 20


def test_hold_on_waits_at_least_a_second_even_a_moment_before_its_deadline(settings: Settings) -> None:
    timeout = RetryableSendError("t", name="timeout")
    assert hold_on_delay(timeout, attempts=3, since=0, now=CLOSING - 0.5, settings=settings) == 1


def test_no_send_is_made_from_exactly_the_guard_before_the_keys_end() -> None:
    assert window_closing(since=100, now=100 + KEY_WINDOW_S - SEND_GUARD_S)
    assert not window_closing(since=100, now=100 + KEY_WINDOW_S - SEND_GUARD_S - 1)


def test_outcome_unknown_says_resend_may_have_it_what_to_check_and_the_last_attempt() -> None:
    bare = outcome_unknown(None)
    assert (bare.name, bare.message) == (OUTCOME_UNKNOWN, UNKNOWN_MESSAGE.format(why=""))
    last = outcome_unknown(RetryableSendError("read timed out", name="timeout"))
    assert last.message == UNKNOWN_MESSAGE.format(why=" (the last attempt: timeout: read timed out)")


# --- a failed send whose outcome is unknown (apply_failure_policy) --------------------------------


def test_a_job_held_on_after_its_last_attempt_waits_the_backoff_of_that_attempt(
    fake: redis.Redis, three: Settings
) -> None:
    """Five failed attempts recorded (after a requeue, say), the sixth a 5xx with none left: held
    on under its key at attempt 6's backoff (320 s, low end 160), with the rng given."""
    job = _job(fake, retries_left=0, record={"attempts": 5})
    boom = RetryableSendError("boom", status_code=500, name="internal_server_error")
    apply_failure_policy(job, boom, three, rng=LowestJitter(), now=_created(job) + 60)
    assert (job.retries_left, job.retry_intervals) == (1, [160])
    assert read_record(fake.hget(job.key, "meta")).get("next_retry_in_s") == 160


def test_a_failure_as_the_window_closes_records_outcome_unknown_with_the_last_attempt(
    fake: redis.Redis, three: Settings
) -> None:
    job = _job(fake, retries_left=0)
    boom = RetryableSendError("boom", status_code=500, name="internal_server_error")
    recorded = apply_failure_policy(job, boom, three, now=_created(job) + CLOSING)
    why = " (the last attempt: internal_server_error: boom)"
    assert (recorded.name, recorded.message) == (OUTCOME_UNKNOWN, UNKNOWN_MESSAGE.format(why=why))
    error = read_record(fake.hget(job.key, "meta")).get("error")
    assert error == {"name": OUTCOME_UNKNOWN, "message": UNKNOWN_MESSAGE.format(why=why), "status_code": None}


def test_a_job_with_no_creation_time_is_taken_as_created_long_ago_its_window_closed(
    fake: redis.Redis, three: Settings
) -> None:
    """A job hash without ``created_at`` (written by another producer): its key's first use is
    unknown, so it is never resent after an ambiguous send; it fails as ``outcome_unknown``."""
    job = _job(fake, retries_left=0)
    job.created_at = None
    boom = RetryableSendError("boom", status_code=500, name="internal_server_error")
    assert apply_failure_policy(job, boom, three, now=time.time()).name == OUTCOME_UNKNOWN

    abandoned = _job(fake, retries_left=0)
    abandoned.created_at = None
    apply_abandoned_policy(abandoned, three, accepted=False, now=time.time())
    assert (read_record(fake.hget(abandoned.key, "meta")).get("error") or {}).get("name") == OUTCOME_UNKNOWN


# --- an abandoned execution under a VM worker (apply_abandoned_policy) ----------------------------


def test_an_accepted_job_abandoned_on_its_last_attempt_runs_once_more_at_once(
    fake: redis.Redis, three: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """One more run (RQ takes it back as it retries), with no wait: it finds the acceptance and
    finishes without sending."""
    job = _job(fake, retries_left=0)
    caplog.set_level(logging.WARNING, logger="emailqueue")
    apply_abandoned_policy(job, three, accepted=True)
    assert (job.retries_left, job.retry_intervals) == (1, [0])
    assert [r.getMessage() for r in caplog.records] == [
        "job em_units: abandoned after Resend accepted it; finished by one more run"
    ]


def test_an_accepted_job_abandoned_with_attempts_left_keeps_them(fake: redis.Redis, three: Settings) -> None:
    job = _job(fake, retries_left=2)
    apply_abandoned_policy(job, three, accepted=True)
    assert (job.retries_left, job.retry_intervals) == (2, [0])


def test_a_job_abandoned_with_one_attempt_left_is_left_to_rq_marked_maybe_sent(
    fake: redis.Redis, three: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """RQ retries it at once, spending that attempt; its record (kept, and saved now) says Resend
    may have it, since the dead send may have been accepted. Nothing is logged."""
    job = _job(fake, retries_left=1)
    job.meta["emailqueue"] = {"requeued": 1, "past_attempts": 3}
    caplog.set_level(logging.WARNING, logger="emailqueue")
    apply_abandoned_policy(job, three, accepted=False, now=_created(job) + 60)
    assert (job.retries_left, job.retry_intervals) == (1, None)
    expected = {"requeued": 1, "past_attempts": 3, "maybe_sent": True}
    assert read_record(job.meta) == expected
    assert read_record(fake.hget(job.key, "meta")) == expected
    assert caplog.records == []


def test_a_job_abandoned_on_its_last_attempt_is_held_on_under_its_key(
    fake: redis.Redis, three: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Held, not failed: one more retry at the backoff of its attempts so far plus this one
    (four recorded, requeued once: attempt 5, 160 s, low end 80), its record (saved at once,
    whatever RQ does with the job next) saying Resend may have it."""
    job = _job(fake, retries_left=0, record={"attempts": 4, "requeued": 1, "past_attempts": 3})
    caplog.set_level(logging.WARNING, logger="emailqueue")
    apply_abandoned_policy(job, three, accepted=False, now=_created(job) + 3600, rng=LowestJitter())
    assert (job.retries_left, job.retry_intervals) == (1, [80])
    saved = read_record(fake.hget(job.key, "meta"))
    assert saved.pop("failed_at")
    assert saved == {
        "error": {"name": ABANDONED, "message": ABANDONED_MESSAGE, "status_code": None},
        "attempts": 5,
        "requeued": 1,
        "past_attempts": 3,
        "next_retry_in_s": 80,
        "maybe_sent": True,
    }
    assert [r.getMessage() for r in caplog.records] == [
        "job em_units: abandoned with no attempts left; resent under its key in 80s"
    ]


def test_a_job_abandoned_on_its_last_attempt_as_its_window_closes_fails_as_outcome_unknown(
    fake: redis.Redis, three: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    job = _job(fake, retries_left=0)
    caplog.set_level(logging.WARNING, logger="emailqueue")
    apply_abandoned_policy(job, three, accepted=False, now=_created(job) + CLOSING)
    assert job.retries_left == 0  # RQ fails it
    saved = read_record(fake.hget(job.key, "meta"))
    why = f" (the last attempt: {ABANDONED}: {ABANDONED_MESSAGE})"
    assert saved.get("error") == {
        "name": OUTCOME_UNKNOWN,
        "message": UNKNOWN_MESSAGE.format(why=why),
        "status_code": None,
    }
    assert (job.meta["emailqueue"]["next_retry_in_s"], saved.get("maybe_sent")) == (None, True)
    assert [r.getMessage() for r in caplog.records] == [
        "job em_units: abandoned as its key's window closes: failed (outcome_unknown)"
    ]


# --- a requeue that started a new key window (window_from) ---------------------------------------

#: A day and a half: the job's creation is far past its key's window, its requeue is not.
DAY_AND_A_HALF = 36 * 3600


def _requeued_long_after_creation(fake: redis.Redis) -> Job:
    """A job on its last attempt, requeued a day and a half after its creation (its record's
    ``window_from``), with one ambiguous failure since."""
    job = _job(fake, retries_left=0)
    window_from = int(_created(job)) + DAY_AND_A_HALF
    job.meta["emailqueue"] = {"attempts": 1, "requeued": 1, "maybe_sent": True, "window_from": window_from}
    job.save_meta()
    return job


def test_a_failure_after_a_requeue_is_held_on_in_the_requeues_window(
    fake: redis.Redis, three: Settings
) -> None:
    """The window runs from the requeue, not the creation: an hour after the requeue, a 5xx on
    the last attempt is held on under the key (attempt 2: 20 s, low end 10), not failed."""
    job = _requeued_long_after_creation(fake)
    boom = RetryableSendError("boom", status_code=500, name="internal_server_error")
    now = _created(job) + DAY_AND_A_HALF + 3600
    assert apply_failure_policy(job, boom, three, rng=LowestJitter(), now=now) is boom
    assert (job.retries_left, job.retry_intervals) == (1, [10])


def test_an_abandonment_after_a_requeue_is_held_on_in_the_requeues_window(
    fake: redis.Redis, three: Settings
) -> None:
    job = _requeued_long_after_creation(fake)
    now = _created(job) + DAY_AND_A_HALF + 3600
    apply_abandoned_policy(job, three, accepted=False, now=now, rng=LowestJitter())
    assert job.retries_left == 1, "held on, not failed as outcome_unknown"
    error = read_record(fake.hget(job.key, "meta")).get("error")
    assert error is not None and error["name"] == ABANDONED
