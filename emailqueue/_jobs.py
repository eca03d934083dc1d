"""The job function RQ runs, and the retry policy applied to the job when a send fails.

A plain VM worker runs it::

    rq worker --with-scheduler --serializer json --url "$QUEUE_REDIS_URL" emails

RQ calls :func:`deliver` with the JSON payload. On a failed send the policy edits the job RQ is
running (``rq.get_current_job()`` is that very object) before the exception propagates, so
RQ's own failure handling does the right thing:

- retryable: ``retry_intervals`` is set to our backoff (a larger ``retry-after`` wins) and RQ
  schedules the retry in its ScheduledJobRegistry;
- quota exceeded: as retryable, but one attempt is given back, so waiting costs nothing;
- permanent: ``retries_left`` is set to 0 and RQ moves the job to its FailedJobRegistry now.

The error name, message and attempt count go into ``job.meta["emailqueue"]`` for the status API.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from typing import Any

from rq import get_current_job
from rq.job import Job

from ._backoff import compute_backoff
from ._constants import META_KEY
from ._exceptions import ConfigurationError, PermanentSendError, QuotaExceededError, SendError
from ._outbox import OutboxClient
from ._payload import parse_payload
from ._ratelimit import RateLimiter, limiter_key
from ._resend import ResendClient, build_http_client
from ._send import LOCAL_RATE_LIMIT, Outcome, Sender, failure_record, record_rejected, send
from ._settings import Settings, load_settings

log = logging.getLogger("emailqueue")

_runtime_lock = threading.Lock()
_runtime: tuple[Settings, Sender] | None = None


def configure_worker(settings: Settings | None = None, client: Sender | None = None) -> None:
    """Set the settings and Resend client that :func:`deliver` uses in this process.

    A VM ``rq worker`` needs none of this: it reads the environment on its first job. Call it to
    run jobs in-process with your own ``httpx`` client (tests do), or with no arguments to
    forget a previous configuration.
    """
    global _runtime
    with _runtime_lock:
        if settings is None and client is None:
            _runtime = None
            return
        settings = settings or load_settings()
        if client is None:
            client = _client_for(settings)
        _runtime = (settings, client)


def _client_for(settings: Settings) -> Sender:
    """A Resend client; or, in dev mode without a key, the local outbox.

    One client per configuration for the life of the process: warm serverless invocations reuse
    its connection pool (no new TLS handshake), and no run leaks one.

    Raises:
        ConfigurationError: no RESEND_API_KEY outside dev mode.
    """
    if settings.resend_api_key is None and settings.dev_mode:
        return OutboxClient(settings.emailqueue_outbox_dir)
    return _cached_client(
        settings.require_api_key(),
        settings.resend_api_url,
        settings.resend_connect_timeout_s,
        settings.resend_timeout_s,
    )


@functools.lru_cache(maxsize=8)
def _cached_client(api_key: str, base_url: str, connect_timeout: float, read_timeout: float) -> ResendClient:
    http = build_http_client(connect_timeout=connect_timeout, read_timeout=read_timeout)
    return ResendClient(http, api_key=api_key, base_url=base_url)


def _default_runtime() -> tuple[Settings, Sender]:
    """Settings and a Resend client for this worker process, built on first use and reused."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            settings = load_settings()
            _runtime = (settings, _client_for(settings))
        return _runtime


def deliver(payload: dict[str, Any]) -> str:
    """RQ job function: send one email (or one batch chunk) through Resend, under the shared
    rate limit. Returns a one-line summary.

    Raises:
        SendError: the send failed; the job has been told whether and when to retry.
        ConfigurationError: RESEND_API_KEY is missing (RQ retries the job; fix and it goes out).
    """
    job = get_current_job()
    try:
        settings, client = _default_runtime()
    except ConfigurationError as exc:
        if job is not None:
            _keep_for_later(job, exc)
        raise
    limiter = None
    if job is not None:
        limiter = RateLimiter(job.connection, limiter_key(job.origin), settings.resend_rate_limit)
    outcome = send_payload(payload, client, settings, job=job, limiter=limiter)
    return f"sent {outcome.sent}, rejected {len(outcome.rejected)}"


#: How long a job waits when the worker is misconfigured (no key): it is kept, not failed.
MISCONFIGURED_RETRY_S = 60


def _keep_for_later(job: Job, exc: ConfigurationError) -> None:
    """The worker cannot send at all (no API key): keep the job, spend no attempt, retry later."""
    job.retries_left = (job.retries_left or 0) + 1
    job.retry_intervals = [MISCONFIGURED_RETRY_S]
    job.meta[META_KEY] = failure_record(
        job.meta.get(META_KEY),
        name="misconfigured",
        message=str(exc),
        next_retry_in_s=MISCONFIGURED_RETRY_S,
        count_attempt=False,
    )
    log.error("job %s kept for later: %s", job.id, exc)


def send_payload(
    raw: Any,
    client: Sender,
    settings: Settings,
    *,
    job: Job | None = None,
    rng: random.Random | None = None,
    limiter: RateLimiter | None = None,
) -> Outcome:
    """Parse ``raw``, send it, record rejected batch recipients, and on failure apply the retry
    policy to ``job``."""
    try:
        payload = parse_payload(raw)
        wait = (
            max(0.0, (job.timeout or settings.email_job_timeout_s) - settings.send_timeout_s) if job else 0.0
        )
        outcome = send(payload, client, limiter=limiter, wait=wait)
    except SendError as exc:
        if job is not None:
            apply_failure_policy(job, exc, settings, rng=rng)
        raise
    if outcome.rejected and job is not None:
        record_rejected(job.connection, job.origin, payload, outcome.rejected, settings)
    return outcome


def attempts_so_far(job: Job) -> int:
    """Failed attempts recorded on the job (0 before the first failure)."""
    record = job.meta.get(META_KEY)
    return int(record.get("attempts", 0)) if isinstance(record, dict) else 0


def apply_failure_policy(
    job: Job, exc: SendError, settings: Settings, *, rng: random.Random | None = None
) -> None:
    """Record the failure on ``job`` and set how RQ should retry it (see the module docstring)."""
    attempts = attempts_so_far(job) + 1
    retries_left = job.retries_left or 0
    delay: int | None = None
    if isinstance(exc, PermanentSendError):
        job.retries_left = 0
    elif exc.name == LOCAL_RATE_LIMIT:
        # Other senders hold every slot: not a failed send, so no attempt is spent.
        job.retries_left = retries_left + 1
        delay = compute_backoff(1, base=2.0, cap=2.0, retry_after=exc.retry_after, rng=rng)
    elif isinstance(exc, QuotaExceededError):
        # Not the email's fault: give the attempt back and wait for the quota.
        job.retries_left = retries_left + 1
        delay = compute_backoff(
            1,
            base=settings.email_quota_retry_s,
            cap=settings.email_quota_retry_s,
            retry_after=exc.retry_after,
            rng=rng,
        )
    elif retries_left > 0:
        delay = compute_backoff(
            attempts,
            base=settings.email_backoff_base_s,
            cap=settings.email_backoff_cap_s,
            retry_after=exc.retry_after,
            rng=rng,
        )
    if delay is not None:
        job.retry_intervals = [delay]
    job.meta[META_KEY] = failure_record(
        job.meta.get(META_KEY),  # keeps what requeues recorded (requeued, past_attempts)
        name=exc.name,
        message=exc.message,
        status_code=exc.status_code,
        next_retry_in_s=delay,
    )
    # RQ persists the job when it schedules a retry, but not when it fails it for good.
    job.save_meta()  # type: ignore[no-untyped-call]
    if delay is None:
        log.warning("job %s failed for good after %d attempt(s): %s", job.id, attempts, exc)
    else:
        log.warning("job %s attempt %d failed (%s); retry in %ds", job.id, attempts, exc, delay)
