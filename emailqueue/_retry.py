"""The retry policy: what a failed send does to the job RQ is running.

It edits the job before the exception propagates, so RQ's own failure handling (a VM worker's,
or the drain's through :mod:`._store`) does the right thing:

- retryable: ``retry_intervals`` is set to our backoff (a larger ``retry-after`` wins) and the
  retry is scheduled in RQ's ScheduledJobRegistry;
- ``local_rate_limit`` (no send slot in time) and quota exceeded: as retryable, but the attempt
  is given back, so waiting costs nothing;
- permanent: ``retries_left`` is set to 0 and the job fails now;
- misconfigured worker (no API key): the job is kept, no attempt spent, retried in a minute.

The error name, message and attempt count go into the job's failure record for the status API.
"""

from __future__ import annotations

import logging
import random

from rq.job import Job

from ._backoff import compute_backoff
from ._exceptions import ConfigurationError, PermanentSendError, QuotaExceededError, SendError
from ._failure import attempts_of, failure_record, record_on
from ._settings import Settings

log = logging.getLogger("emailqueue")

#: The name of the error raised when no shared send slot came in time (not Resend's: ours).
LOCAL_RATE_LIMIT = "local_rate_limit"
#: How long a job waits when the worker is misconfigured (no key): it is kept, not failed.
MISCONFIGURED_RETRY_S = 60


def keep_for_later(job: Job, exc: ConfigurationError) -> None:
    """The worker cannot send at all (no API key): keep the job, spend no attempt, retry later."""
    job.retries_left = (job.retries_left or 0) + 1
    job.retry_intervals = [MISCONFIGURED_RETRY_S]
    record_on(
        job,
        failure_record(
            job.meta,
            name="misconfigured",
            message=str(exc),
            next_retry_in_s=MISCONFIGURED_RETRY_S,
            count_attempt=False,
        ),
    )
    log.error("job %s kept for later: %s", job.id, exc)


def plan_retry(
    exc: SendError, attempts: int, retries_left: int, settings: Settings, rng: random.Random | None
) -> tuple[int | None, int]:
    """The policy as a pure function of the error and the attempt: (seconds until the retry, or
    None to fail now; the job's new ``retries_left``, before RQ takes one off as it schedules)."""
    if isinstance(exc, PermanentSendError):
        return None, 0
    if exc.name == LOCAL_RATE_LIMIT:
        # Other senders hold every slot: not a failed send, so no attempt is spent.
        return compute_backoff(1, base=2.0, cap=2.0, retry_after=exc.retry_after, rng=rng), retries_left + 1
    if isinstance(exc, QuotaExceededError):
        # Not the email's fault: give the attempt back and wait for the quota.
        quota = settings.email_quota_retry_s
        delay = compute_backoff(1, base=quota, cap=quota, retry_after=exc.retry_after, rng=rng)
        return delay, retries_left + 1
    if retries_left > 0:
        delay = compute_backoff(
            attempts,
            base=settings.email_backoff_base_s,
            cap=settings.email_backoff_cap_s,
            retry_after=exc.retry_after,
            rng=rng,
        )
        return delay, retries_left
    return None, retries_left


def apply_failure_policy(
    job: Job, exc: SendError, settings: Settings, *, rng: random.Random | None = None
) -> None:
    """Record the failure on ``job`` and set how RQ should retry it (see the module docstring)."""
    attempts = attempts_of(job.meta) + 1
    delay, job.retries_left = plan_retry(exc, attempts, job.retries_left or 0, settings, rng)
    if delay is not None:
        job.retry_intervals = [delay]
    record = failure_record(
        job.meta,  # keeps what requeues recorded (requeued, past_attempts)
        name=exc.name,
        message=exc.message,
        status_code=exc.status_code,
        next_retry_in_s=delay,
    )
    # RQ persists the job when it schedules a retry, but not when it fails it for good.
    record_on(job, record, save=True)
    if delay is None:
        log.warning("job %s failed for good after %d attempt(s): %s", job.id, attempts, exc)
    else:
        log.warning("job %s attempt %d failed (%s); retry in %ds", job.id, attempts, exc, delay)
