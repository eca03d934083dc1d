"""One send, as every worker does it: the shared rate limit, single or batch, rejected recipients.

Used by the RQ job function (VM workers) and by the serverless drain alike, so both behave the
same way toward Resend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._exceptions import RetryableSendError, SendError
from ._payload import Payload
from ._ratelimit import RateLimiter
from ._redact import mask_email
from ._resend import BatchResult
from ._retry import LOCAL_RATE_LIMIT

log = logging.getLogger("emailqueue")


class Sender(Protocol):
    """What sends email: :class:`ResendClient`, or the dev-mode :class:`OutboxClient`."""

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str: ...

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult: ...


@dataclass(frozen=True)
class Outcome:
    """What a send did: how many emails Resend took, the reason for each rejected index, and (a
    batch) the Resend id of each accepted index."""

    sent: int
    rejected: dict[int, str] = field(default_factory=dict)
    ids: dict[int, str] = field(default_factory=dict)


def send(
    payload: Payload,
    client: Sender,
    *,
    limiter: RateLimiter | None = None,
    wait: float = 0.0,
    slot_reserved: bool = False,
) -> Outcome:
    """Send ``payload`` (taking a shared rate-limit slot first, waiting at most ``wait`` s, unless
    the caller reserved one: ``slot_reserved``).

    A 429 ``rate_limit_exceeded`` pauses every sender that shares ``limiter`` for ``retry-after``.

    Raises:
        SendError: from Resend; or a retryable ``local_rate_limit`` if no slot came in time.
    """
    if limiter is not None and not slot_reserved and not limiter.acquire(timeout=wait):
        raise RetryableSendError(
            "no send slot free under RESEND_RATE_LIMIT in time", name=LOCAL_RATE_LIMIT, retry_after=1.0
        )
    try:
        if payload.batch:
            result = client.send_batch(payload.emails, idempotency_key=payload.idempotency_key)
            outcome = Outcome(sent=len(result.ids), rejected=result.errors, ids=result.ids)
        else:
            client.send(payload.email, idempotency_key=payload.idempotency_key)
            outcome = Outcome(sent=1)
    except SendError as exc:
        if limiter is not None and exc.status_code == 429 and exc.name == "rate_limit_exceeded":
            limiter.pause(exc.retry_after or 1.0)
        raise
    log.info("sent %d email(s) to %s", outcome.sent, ", ".join(mask_email(r) for r in payload.recipients[:3]))
    return outcome
