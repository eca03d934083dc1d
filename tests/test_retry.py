"""The retry policy (emailqueue._retry) on its own: the pure plan of each error kind, and what
the policy writes on the job RQ is running (its record, its retries, the lines an operator reads).
Runs on both tiers (fakeredis and the suite's real server)."""

from __future__ import annotations

import logging
import random

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue import ConfigurationError, QuotaExceededError, RetryableSendError, Settings
from emailqueue._failure import read_record
from emailqueue._retry import (
    LOCAL_RATE_LIMIT,
    MISCONFIGURED_RETRY_S,
    apply_failure_policy,
    keep_for_later,
    plan_retry,
)


class LowestJitter(random.Random):
    """An rng whose jitter is always the low end of the window: the delay is exactly d/2."""

    def uniform(self, a: float, b: float) -> float:
        return a


def test_a_retry_after_beats_the_wait_for_a_send_slot_and_for_the_quota(settings: Settings) -> None:
    """The server's (or the limiter's) retry-after is never cut short: not for a local rate limit
    (2 s of our own), nor for Resend's quota (EMAIL_QUOTA_RETRY_S)."""
    local = RetryableSendError("no slot", name=LOCAL_RATE_LIMIT, retry_after=30.0)
    assert plan_retry(local, 1, 3, settings, random.Random(1)) == (31, 4)  # one second more, as RQ truncates
    short_quota = settings.model_copy(update={"email_quota_retry_s": 60})
    quota = QuotaExceededError("quota", name="daily_quota_exceeded", status_code=429, retry_after=500.0)
    assert plan_retry(quota, 1, 3, short_quota, random.Random(1)) == (501, 4)


def test_no_send_slot_waits_two_seconds_drawn_from_the_rng_and_gives_the_attempt_back(
    settings: Settings,
) -> None:
    """Other senders hold every slot: a short wait of our own (2 s, the low end 1), on any attempt."""
    local = RetryableSendError("no slot", name=LOCAL_RATE_LIMIT)
    assert plan_retry(local, 5, 0, settings, LowestJitter()) == (1, 1)


def test_a_quota_error_waits_the_quota_delay_drawn_from_the_rng_and_gives_the_attempt_back(
    settings: Settings,
) -> None:
    """EMAIL_QUOTA_RETRY_S is the whole window (no growth per attempt): 60 s, the low end 30."""
    quota = QuotaExceededError("quota", name="daily_quota_exceeded", status_code=429)
    short_quota = settings.model_copy(update={"email_quota_retry_s": 60})
    assert plan_retry(quota, 5, 0, short_quota, LowestJitter()) == (30, 1)


def test_the_last_attempt_fails_and_the_one_before_it_retries(settings: Settings) -> None:
    boom = RetryableSendError("boom", name="internal_server_error", status_code=500)
    delay, left = plan_retry(boom, 3, 1, settings, LowestJitter())
    assert (delay, left) == (20, 1)  # base 10 s: attempt 3 waits up to 40 s, at least 20
    assert plan_retry(boom, 4, 0, settings, LowestJitter()) == (None, 0)  # none left: fail now


def _job(conn: redis.Redis, retries_left: int = 3) -> Job:
    job = Job.create("emailqueue._jobs.deliver", kwargs={"payload": {}}, connection=conn, id="em_retry")
    job.serializer = JSONSerializer
    job.retries_left = retries_left
    job.save()
    return job


def test_the_policy_draws_its_jitter_from_the_rng_it_is_given(conn: redis.Redis, settings: Settings) -> None:
    job = _job(conn)
    boom = RetryableSendError("boom", name="internal_server_error", status_code=500)
    apply_failure_policy(job, boom, settings, rng=LowestJitter())
    assert job.retry_intervals == [5]  # base 10 s, the low end of [5, 10]
    assert read_record(conn.hget(job.key, "meta"))["next_retry_in_s"] == 5  # saved now


def test_the_policy_tells_the_operator_which_job_failed_why_and_what_comes_next(
    conn: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    job = _job(conn, retries_left=1)
    caplog.set_level(logging.WARNING, logger="emailqueue")
    # A definite refusal (408: not processed), so the last attempt fails; an ambiguous one (a 5xx)
    # would be held on under its key instead (tests/test_outcome_unknown.py).
    boom = RetryableSendError("Resend timed out the request", name="request_timeout", status_code=408)
    apply_failure_policy(job, boom, settings, rng=LowestJitter())
    job.retries_left = 0
    apply_failure_policy(job, boom, settings, rng=LowestJitter())
    assert [r.getMessage() for r in caplog.records] == [
        "job em_retry attempt 1 failed (408 request_timeout: Resend timed out the request); retry in 5s",
        "job em_retry failed for good after 2 attempt(s): 408 request_timeout: Resend timed out the request",
    ]


def test_a_worker_without_a_key_keeps_the_job_and_says_why(
    conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    job = _job(conn, retries_left=2)
    caplog.set_level(logging.ERROR, logger="emailqueue")
    keep_for_later(job, ConfigurationError("RESEND_API_KEY is not set"))
    assert (job.retries_left, job.retry_intervals) == (3, [MISCONFIGURED_RETRY_S])  # RQ takes one back
    record = job.meta["emailqueue"]
    assert record.get("attempts", 0) == 0 and record["error"]["name"] == "misconfigured"  # none spent
    assert [r.getMessage() for r in caplog.records] == [
        "job em_retry kept for later: RESEND_API_KEY is not set"
    ]
