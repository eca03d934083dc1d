"""One send, as every worker does it: the shared rate limit, single or batch, rejected recipients.

Used by the RQ job function (VM workers) and by the serverless drain alike, so both behave the
same way toward Resend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from ._constants import JOB_FUNC_PATH, META_KEY
from ._exceptions import RetryableSendError, SendError
from ._payload import Payload, idempotency_key_for
from ._ratelimit import RateLimiter
from ._redact import mask_email
from ._resend import BatchResult
from ._settings import Settings

log = logging.getLogger("emailqueue")

#: The name of the error raised when no shared send slot came in time (not Resend's: ours).
LOCAL_RATE_LIMIT = "local_rate_limit"


class Sender(Protocol):
    """What sends email: :class:`ResendClient`, or the dev-mode :class:`OutboxClient`."""

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str: ...

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult: ...


def failure_record(
    previous: Any,
    *,
    name: str,
    message: str,
    status_code: int | None = None,
    next_retry_in_s: int | None = None,
    count_attempt: bool = True,
) -> dict[str, Any]:
    """The record a job keeps in ``job.meta["emailqueue"]`` after a failure (the status API shows
    it). What ``previous`` held (requeue counts) is kept; a counted attempt bumps ``attempts`` and
    stamps ``failed_at``."""
    record: dict[str, Any] = dict(previous) if isinstance(previous, dict) else {}
    record["error"] = {"name": name, "message": message, "status_code": status_code}
    record["next_retry_in_s"] = next_retry_in_s
    if count_attempt:
        record["attempts"] = int(record.get("attempts", 0)) + 1
        record["failed_at"] = datetime.now(UTC).isoformat()
    return record


@dataclass(frozen=True)
class Outcome:
    """What a send did: how many emails Resend took, and the reason for each rejected index."""

    sent: int
    rejected: dict[int, str] = field(default_factory=dict)


def send(
    payload: Payload, client: Sender, *, limiter: RateLimiter | None = None, wait: float = 0.0
) -> Outcome:
    """Send ``payload`` (taking a shared rate-limit slot first, waiting at most ``wait`` s).

    A 429 ``rate_limit_exceeded`` pauses every sender that shares ``limiter`` for ``retry-after``.

    Raises:
        SendError: from Resend; or a retryable ``local_rate_limit`` if no slot came in time.
    """
    if limiter is not None and not limiter.acquire(timeout=wait):
        raise RetryableSendError(
            "no send slot free under RESEND_RATE_LIMIT in time", name=LOCAL_RATE_LIMIT, retry_after=1.0
        )
    try:
        if payload.batch:
            result = client.send_batch(payload.emails, idempotency_key=payload.idempotency_key)
            outcome = Outcome(sent=len(result.ids), rejected=result.errors)
        else:
            client.send(payload.email, idempotency_key=payload.idempotency_key)
            outcome = Outcome(sent=1)
    except SendError as exc:
        if limiter is not None and exc.status_code == 429 and exc.name == "rate_limit_exceeded":
            limiter.pause(exc.retry_after or 1.0)
        raise
    log.info("sent %d email(s) to %s", outcome.sent, ", ".join(mask_email(r) for r in payload.recipients[:3]))
    return outcome


def record_rejected(
    connection: redis.Redis, queue_name: str, payload: Payload, rejected: dict[int, str], settings: Settings
) -> list[str]:
    """Make each recipient Resend rejected from a batch a failed job of its own.

    The valid recipients of the batch were sent and are done; a rejected one now shows in the
    failed list and queue-status like any failed email, under its own id, with Resend's reason.
    Returns the failed job ids.
    """
    queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
    registry = FailedJobRegistry(queue=queue)
    failed = []
    with connection.pipeline() as pipe:
        for index, message in sorted(rejected.items()):
            job_id = payload.ids[index]
            single = Payload.single(payload.emails[index], idempotency_key_for(job_id), payload.event_id)
            job = Job.create(
                JOB_FUNC_PATH,
                kwargs={"payload": single.to_json()},
                connection=connection,
                id=job_id,
                origin=queue_name,
                status=JobStatus.FAILED,
                result_ttl=0,
                failure_ttl=settings.email_failure_ttl_s,
                timeout=settings.email_job_timeout_s,
                description=f"email to {mask_email(single.recipients[0])}",
                serializer=JSONSerializer,
                meta={
                    META_KEY: failure_record(
                        None, name="rejected_recipient", message=message, status_code=422
                    )
                },
            )
            job.save(pipeline=pipe)  # with meta: the registry's own save leaves meta out
            registry.add(
                job,
                ttl=settings.email_failure_ttl_s,
                exc_string=f"rejected by Resend: {message}",
                pipeline=pipe,
            )
            failed.append(job_id)
        pipe.execute()
    log.warning("batch %s: %d recipient(s) rejected by Resend", payload.idempotency_key, len(failed))
    return failed
