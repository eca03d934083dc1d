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

**Outcome unknown.** A send that failed *ambiguously* (:func:`is_ambiguous`: a timeout, a
connection lost after the request went out, a 5xx, a 409 ``concurrent_idempotent_requests``, a
reply we could not read) may have been accepted by Resend. Once such a send has happened, failing
the job would record as failed an email Resend may have sent, and a requeue could send it again.
Resending it under the same Idempotency-Key is safe while Resend remembers the key, 24 h
(docs/PLATFORM.md, "Resend: idempotency keys"). So when the attempts of a job (or a pack,
:mod:`._pack`) run out and any of its sends was ambiguous, it is not failed: it is retried with
the usual backoff (up to its cap) under the same key (:func:`hold_on_delay`) until Resend answers for certain
(accepted: done; refused: failed with Resend's reason), and only when the key's window is about
to close (``KEY_WINDOW_S - KEY_WINDOW_MARGIN_S`` after the key's first possible use) does it
fail, as ``outcome_unknown``, with a record saying it may have been delivered. A send is never
made within ``SEND_GUARD_S`` of the window's end after an ambiguous one (:func:`window_closing`).
Definite failures (a 429 ``rate_limit_exceeded``, 408/425, a quota error, no send slot, a
connection that never opened) leave the count of attempts as it was.

**Abandoned.** An execution whose worker, drain or caller died mid-send is just as ambiguous:
it may have died after Resend accepted the email. So a job abandoned with no attempts left is
held on the same way (:func:`plan_abandoned`): resent under its key, with the usual backoff (up
to its cap), while the window lasts, failed as ``outcome_unknown`` when it closes. The drain's recovery
(:meth:`._store.JobStore.recover`) and a VM worker's (:func:`apply_abandoned_policy`, called by
``EmailJob`` and ``EmailWorker``) both use it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from rq.job import Job

from ._backoff import compute_backoff
from ._exceptions import (
    ConfigurationError,
    PermanentSendError,
    QuotaExceededError,
    RetryableSendError,
    SendError,
)
from ._failure import (
    FailureRecord,
    attempts_of,
    failure_record,
    key_window_start,
    maybe_sent_of,
    read_record,
    record_on,
)
from ._settings import Settings

log = logging.getLogger("emailqueue")

#: The name of the error raised when no shared send slot came in time (not Resend's: ours).
LOCAL_RATE_LIMIT = "local_rate_limit"
#: How long a job waits when the worker is misconfigured (no key): it is kept, not failed.
MISCONFIGURED_RETRY_S = 60
#: Resend remembers an Idempotency-Key this long (docs/PLATFORM.md, "Resend: idempotency keys").
KEY_WINDOW_S = 24 * 3600
#: An ambiguous send is retried under its key until this long before the window closes: a retry
#: due then may still wait for the next drain run, or behind a backlog.
KEY_WINDOW_MARGIN_S = 3600
#: After an ambiguous send, no send is made this close to the window's end (it fails as unknown).
SEND_GUARD_S = 600
#: The error name of an email whose fate Resend never told us before its key's window closed.
OUTCOME_UNKNOWN = "outcome_unknown"
#: The error name of an execution whose worker, drain or caller died mid-send.
ABANDONED = "abandoned"
#: Our error names for requests that never left this host: they cannot have been accepted.
_NEVER_SENT = frozenset({LOCAL_RATE_LIMIT, "connect_error", "connect_timeout"})


def is_ambiguous(exc: SendError) -> bool:
    """Whether Resend may have accepted the request that failed with ``exc``."""
    if not isinstance(exc, RetryableSendError) or isinstance(exc, QuotaExceededError):
        return False  # a definite refusal, or a quota error (nothing was processed)
    # Refused before it was processed (never sent; 429 rate_limit_exceeded, 408, 425), or else
    # ambiguous: a timeout, a lost connection, a 5xx, a concurrent 409, an unreadable reply.
    return exc.name not in _NEVER_SENT and exc.status_code not in (408, 425, 429)


def backoff_delay(exc: SendError, attempts: int, settings: Settings, rng: random.Random | None) -> int:
    """Seconds before resending a job or pack after its ``attempts``-th failed send: the
    configured exponential backoff (``EMAIL_BACKOFF_BASE_S``, capped at ``EMAIL_BACKOFF_CAP_S``),
    or Resend's ``retry_after`` when that is longer."""
    return compute_backoff(
        attempts,
        base=settings.email_backoff_base_s,
        cap=settings.email_backoff_cap_s,
        retry_after=exc.retry_after,
        rng=rng,
    )


def quota_delay(exc: SendError, settings: Settings, rng: random.Random | None) -> int:
    """Seconds before resending after a quota error (``EMAIL_QUOTA_RETRY_S``, or Resend's
    ``retry_after`` when that is longer); no attempt is spent on it."""
    quota = settings.email_quota_retry_s
    return compute_backoff(1, base=quota, cap=quota, retry_after=exc.retry_after, rng=rng)


def hold_on_delay(
    exc: SendError,
    *,
    attempts: int,
    since: float,
    now: float,
    settings: Settings,
    rng: random.Random | None = None,
) -> int | None:
    """Seconds until the next send of a job or pack whose attempts ran out while its outcome is
    unknown (a send since ``since``, Unix time, may have been accepted): the usual backoff for
    ``attempts`` (up to its cap), and never past ``since + KEY_WINDOW_S - KEY_WINDOW_MARGIN_S``.
    None: the window is closing, fail it as :data:`OUTCOME_UNKNOWN`."""
    deadline = since + KEY_WINDOW_S - KEY_WINDOW_MARGIN_S
    if not isinstance(exc, RetryableSendError) or now >= deadline:
        return None
    delay = backoff_delay(exc, attempts, settings, rng)
    return max(1, min(delay, math.ceil(deadline - now)))


def window_closing(since: float, now: float) -> bool:
    """Whether a send now, after an ambiguous one since ``since``, could come after Resend forgot
    the key (so a replay could be sent as a new email)."""
    return now >= since + KEY_WINDOW_S - SEND_GUARD_S


def key_forgotten(meta: Any, created_at: Callable[[], float | None], now: float) -> bool:
    """Whether a job must not be sent again: a send of it failed ambiguously (its record in
    ``meta`` says so), and Resend's memory of its key, counted from :func:`key_window_start` of
    its creation, is about to end. ``created_at`` reads the creation (Unix time; None: unknown,
    never taken as forgotten) only for such a job: for the drain it is a Redis read."""
    if not maybe_sent_of(meta):
        return False
    created = created_at()
    return created is not None and window_closing(key_window_start(meta, created), now)


def _window_start(job: Job) -> float:
    """:func:`key_window_start` of an RQ job (a job without a creation time counts from 0)."""
    return key_window_start(job.meta, job.created_at.timestamp() if job.created_at else 0.0)


def outcome_unknown(last: SendError | None) -> PermanentSendError:
    """The error an email fails with when its key's window closed before Resend told us its fate."""
    why = f" (the last attempt: {last.name}: {last.message})" if last is not None else ""
    return PermanentSendError(
        "Resend may have delivered this email: a send timed out or lost its reply, and no later "
        f"send under its Idempotency-Key got a definite answer before the key's 24 h window closed{why}. "
        "Check Resend (dashboard or GET /emails) before requeueing it: a requeue may send it twice.",
        name=OUTCOME_UNKNOWN,
    )


def abandoned_error() -> RetryableSendError:
    """The error of an execution whose worker died mid-send (ambiguous: Resend may have it)."""
    return RetryableSendError(
        "its worker died mid-send, maybe after Resend accepted the email", name=ABANDONED
    )


def plan_abandoned(
    meta: Any, *, since: float, now: float, settings: Settings, rng: random.Random | None = None
) -> tuple[int | None, SendError, FailureRecord]:
    """The policy for a job abandoned with no attempts left (``meta``: its meta; ``since``: when
    it was created, before any send under its key). Returns (seconds until it is resent under its
    key, with the delay :func:`hold_on_delay` gives, or None to fail it now; the error to
    record: ``abandoned``, or ``outcome_unknown`` when the key's window is closing; the job's new
    failure record, which says Resend may have it)."""
    error: SendError = abandoned_error()
    # Out of attempts: it has made at least the allowed number, so the delay is the cap's.
    attempts = max(attempts_of(meta) + 1, settings.email_max_attempts)
    delay = hold_on_delay(error, attempts=attempts, since=since, now=now, settings=settings, rng=rng)
    if delay is None:
        error = outcome_unknown(error)
    record = failure_record(
        meta, name=error.name, message=error.message, next_retry_in_s=delay, maybe_sent=True
    )
    return delay, error, record


def apply_abandoned_policy(
    job: Job,
    settings: Settings,
    *,
    accepted: bool,
    now: float | None = None,
    rng: random.Random | None = None,
) -> None:
    """RQ is about to settle an execution of ``job`` whose worker died (its StartedJobRegistry
    cleanup, or a work horse killed under a live worker): edit the job so RQ's own handling does
    the right thing, as :func:`apply_failure_policy` does for a failed send.

    - ``accepted`` (Resend's acceptance is recorded): one more run, at once; it finds the record
      and finishes the job without sending (RQ would otherwise fail it on its last attempt).
    - attempts left: RQ retries it, spending one, as the drain's recovery does; its record now
      says Resend may have it (``maybe_sent``), as the drain's recovery marks it, so a job whose
      later sends all fail is held on to under its key rather than failed.
    - no attempts left: :func:`plan_abandoned`; one more retry at its delay, or failed as
      ``outcome_unknown``.
    """
    if accepted:
        job.retries_left = max(job.retries_left or 0, 1)
        job.retry_intervals = [0]
        log.warning("job %s: abandoned after Resend accepted it; finished by one more run", job.id)
        return
    if (job.retries_left or 0) > 0:
        record = read_record(job.meta)
        record["maybe_sent"] = True
        record_on(job, record, save=True)
        return
    since = _window_start(job)
    now = time.time() if now is None else now
    delay, error, record = plan_abandoned(job.meta, since=since, now=now, settings=settings, rng=rng)
    # RQ saves the meta with a retry, not when it fails the job (docs/PLATFORM.md, "RQ: abandoned jobs").
    record_on(job, record, save=True)
    if delay is None:
        log.warning("job %s: abandoned as its key's window closes: failed (%s)", job.id, error.name)
        return
    job.retries_left = 1
    job.retry_intervals = [delay]
    log.warning("job %s: abandoned with no attempts left; resent under its key in %ds", job.id, delay)


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
        return quota_delay(exc, settings, rng), retries_left + 1
    if retries_left > 0:
        return backoff_delay(exc, attempts, settings, rng), retries_left
    return None, retries_left


def apply_failure_policy(
    job: Job,
    exc: SendError,
    settings: Settings,
    *,
    rng: random.Random | None = None,
    now: float | None = None,
) -> SendError:
    """Record the failure on ``job`` and set how RQ should retry it (see the module docstring).
    Returns the error recorded: ``exc``, or :func:`outcome_unknown` when the job fails while a
    send of it may have been accepted and its key's window is closing."""
    attempts = attempts_of(job.meta) + 1
    maybe_sent = maybe_sent_of(job.meta) or is_ambiguous(exc)
    delay, job.retries_left = plan_retry(exc, attempts, job.retries_left or 0, settings, rng)
    if delay is None and maybe_sent and not isinstance(exc, PermanentSendError):
        # Out of attempts, but Resend may have this email: retry under its key while it lasts.
        since = _window_start(job)  # before any send of its key that counts
        now = time.time() if now is None else now
        delay = hold_on_delay(exc, attempts=attempts, since=since, now=now, settings=settings, rng=rng)
        if delay is None:
            exc = outcome_unknown(exc)
        else:
            job.retries_left = 1
    if delay is not None:
        job.retry_intervals = [delay]
    record = failure_record(
        job.meta,  # keeps what requeues recorded (requeued, past_attempts)
        name=exc.name,
        message=exc.message,
        status_code=exc.status_code,
        next_retry_in_s=delay,
        maybe_sent=maybe_sent,
    )
    # RQ persists the job when it schedules a retry, but not when it fails it for good.
    record_on(job, record, save=True)
    if delay is None:
        log.warning("job %s failed for good after %d attempt(s): %s", job.id, attempts, exc)
    else:
        log.warning("job %s attempt %d failed (%s); retry in %ds", job.id, attempts, exc, delay)
    return exc
