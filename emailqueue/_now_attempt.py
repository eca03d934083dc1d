"""One claimed job, sent by its caller: the send, the ack, or the failure settled the way every
worker settles it (see ``_now`` for the whole immediate path)."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import redis

from ._constants import JOB_FUNC_PATH
from ._drain import ABANDON_GRACE_S
from ._events import sent_emails
from ._exceptions import EmailQueueError, PermanentSendError, RetryableSendError, SendError
from ._jobs import RUNTIME
from ._now_scripts import Claim
from ._outbox import dev_outbox
from ._payload import Payload, parse_payload
from ._ratelimit import MARGIN, RateLimiter, limiter_key
from ._send import Sender, send
from ._settings import Settings
from ._store import JobStore

log = logging.getLogger("emailqueue.now")

#: The ``worker_name`` an immediate claim writes on the job (what ``rq info`` shows).
WORKER_NAME = "emailqueue-now"

Status = Literal["sent", "queued", "retrying", "failed", "not_queued", "left_to_recovery"]


@dataclass(frozen=True)
class NowOutcome:
    """What an immediate attempt did with one job.

    ``status``:

    - ``sent``: Resend accepted the email (``.sent`` is True);
    - ``queued``: no send slot of ``RESEND_RATE_LIMIT`` was free in time; the job waits in the
      queue for a drain or worker;
    - ``retrying``: Resend answered with a transient error; the job retries with backoff;
    - ``failed``: Resend rejected the email for good; the job is in the failed list;
    - ``not_queued``: (:func:`deliver_now`) the job was not waiting in the queue: a drain or
      worker took it first, it was already sent or failed, or the id is unknown;
    - ``left_to_recovery``: something else failed after the claim (Redis unreachable, say); the
      claim stays, and a later drain requeues the job with the same Idempotency-Key.

    ``detail`` says why, when it was not sent.
    """

    job_id: str
    status: Status
    detail: str = ""

    @property
    def sent(self) -> bool:
        return self.status == "sent"


def new_claim(job_id: str, settings: Settings, now: float) -> Claim:
    """This caller's claim on ``job_id``, made at ``now``."""
    # The claim outlives the longest this attempt can take, plus the drain's grace; a claim
    # older than that belongs to a caller that died, and RECOVER takes it back.
    lasts = settings.email_now_max_wait_s + now_timeouts(settings)[0] + settings.email_now_timeout_s
    return Claim(
        job_id=job_id,
        member=f"{job_id}:now-{uuid.uuid4().hex[:12]}",
        now=now,
        interval=MARGIN / settings.resend_rate_limit if settings.resend_rate_limit else 0,
        horizon=settings.email_now_max_wait_s,
        deadline=now + lasts + ABANDON_GRACE_S,
        started_at=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        worker=WORKER_NAME,
    )


def attempt(
    store: JobStore,
    claim: Claim,
    payload: Payload,
    client: Sender,
    wait: float,
    sleep: Callable[[float], None],
) -> NowOutcome:
    """Send a claimed job and settle it. Never raises (but for KeyboardInterrupt and the like)."""
    try:
        if wait > 0:
            sleep(wait)
        outcome = send(payload, client)
    except SendError as exc:
        if exc.status_code == 429 and exc.name == "rate_limit_exceeded":
            limiter = RateLimiter(store.conn, limiter_key(store.queue.name), store.settings.resend_rate_limit)
            with contextlib.suppress(EmailQueueError):
                limiter.pause(exc.retry_after or 1.0)  # every sender waits, not just this one
        return settle_failure(store, claim, exc)
    except Exception as exc:
        log.error("immediate send of job %s failed unexpectedly: %r", claim.job_id, exc)
        return settle_failure(store, claim, RetryableSendError(repr(exc)[:300], name="internal_error"))
    try:
        if outcome.rejected:
            store.record_rejected(payload, outcome.rejected)
        # Drop the claim, delete the job (result_ttl=0) and record the Resend id: one round trip.
        store.ack([claim.row], sent_emails(claim.job_id, payload, outcome.resend_ids))
    except redis.RedisError as exc:
        # Sent, but not acked: a later drain requeues it and Resend answers the same key from
        # its idempotency cache, sending nothing again.
        log.warning("job %s sent but not acked (%r); a later drain settles it", claim.job_id, exc)
    return NowOutcome(claim.job_id, "sent")


def settle_failure(store: JobStore, claim: Claim, error: SendError) -> NowOutcome:
    """Retry or fail the claimed job through the job store, exactly as the drain does. If Redis
    fails here, the claim stays and a later drain recovers the job."""
    try:
        retried = store.retry_or_fail(claim.row, error)
        status: Status = "retrying" if retried else "failed"
    except Exception as exc:
        log.warning(
            "job %s: could not record the failed immediate send (%r); left to a later drain",
            claim.job_id,
            exc,
        )
        return NowOutcome(claim.job_id, "left_to_recovery", f"{error.name}: {error.message}"[:300])
    return NowOutcome(claim.job_id, status, f"{error.name}: {error.message}"[:300])


def payload_of(data: bytes) -> Payload:
    """The payload of a job hash's ``data`` field (zlib-compressed JSON of an RQ call)."""
    try:
        func, _instance, args, kwargs = json.loads(zlib.decompress(data))
    except Exception:
        raise PermanentSendError("job data is not a JSON-serialized RQ call", name="bad_payload") from None
    if func != JOB_FUNC_PATH or args or not isinstance(kwargs, dict) or "payload" not in kwargs:
        raise PermanentSendError(f"not an emailqueue job ({str(func)[:80]})", name="bad_payload")
    return parse_payload(kwargs["payload"])


def now_timeouts(settings: Settings) -> tuple[float, float]:
    """(connect, read) timeouts of an immediate send."""
    return min(settings.resend_connect_timeout_s, settings.email_now_timeout_s), settings.email_now_timeout_s


def now_client(settings: Settings) -> Sender:
    """The Resend client of immediate sends (short timeouts); without a key, the local outbox in
    dev mode or next to a running ``emailqueue dev``.

    Raises:
        ConfigurationError: no RESEND_API_KEY (outside dev mode).
    """
    outbox = dev_outbox(settings)  # dev mode, or next to a running `emailqueue dev`, without a key
    if outbox is not None:
        return outbox
    settings.require_api_key()  # the outbox above is the only sender without a key
    # One per configuration, held by the process's runtime (closed by ``configure_worker()``):
    # warm invocations reuse its connections.
    return RUNTIME.client_for(settings, timeouts=now_timeouts(settings))
