"""The job payload: the wire format between the enqueue side and every worker.

A job is ``emailqueue._jobs.deliver(payload=...)`` serialized as JSON by RQ. The payload is
versioned so that a worker can refuse, clearly, what it does not understand.

Version 1::

    {"v": 1, "kind": "email", "email": {<Resend POST /emails body>},
     "idempotency_key": "emailqueue-<job id>", "event_id": "<str or null>"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._constants import IDEMPOTENCY_KEY_PREFIX, PAYLOAD_VERSION
from ._exceptions import PermanentSendError


@dataclass(frozen=True)
class Payload:
    """A parsed, version-checked job payload."""

    email: dict[str, Any]
    idempotency_key: str
    event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": PAYLOAD_VERSION,
            "kind": "email",
            "email": self.email,
            "idempotency_key": self.idempotency_key,
            "event_id": self.event_id,
        }

    @property
    def recipients(self) -> list[str]:
        to = self.email.get("to", [])
        return [to] if isinstance(to, str) else list(to)


def idempotency_key_for(job_id: str) -> str:
    """The Idempotency-Key of a job: fixed at enqueue, the same on every retry and after a crash."""
    return IDEMPOTENCY_KEY_PREFIX + job_id


def parse_payload(raw: Any) -> Payload:
    """Check and parse a payload read back from a job.

    Raises:
        PermanentSendError: (name ``bad_payload``) the payload is malformed or of an unknown
            version; retrying cannot fix it, so the job fails alone with this reason.
    """

    def bad(reason: str) -> PermanentSendError:
        return PermanentSendError(f"malformed job payload: {reason}", name="bad_payload")

    if not isinstance(raw, dict):
        raise bad(f"expected a JSON object, got {type(raw).__name__}")
    if raw.get("v") != PAYLOAD_VERSION:
        raise bad(f"unknown payload version {raw.get('v')!r}; this worker understands {PAYLOAD_VERSION}")
    email, key = raw.get("email"), raw.get("idempotency_key")
    if not isinstance(email, dict) or not email.get("to") or not email.get("subject"):
        raise bad("'email' must be an object with 'to' and 'subject'")
    if not isinstance(key, str) or not 1 <= len(key) <= 256:
        raise bad("'idempotency_key' must be a string of 1-256 characters")
    event_id = raw.get("event_id")
    return Payload(email=email, idempotency_key=key, event_id=event_id if isinstance(event_id, str) else None)
