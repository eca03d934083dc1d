"""The job payload: the wire format between the enqueue side and every worker.

A job is ``emailqueue._jobs.deliver(payload=...)`` serialized as JSON by RQ. The payload is
versioned so that a worker can refuse, clearly, what it does not understand.

Version 1, one email::

    {"v": 1, "kind": "email", "email": {<Resend POST /emails body>},
     "idempotency_key": "emailqueue-<job id>", "event_id": "<str or null>"}

Version 2, a chunk of up to 100 personal emails sent with one ``POST /emails/batch``::

    {"v": 2, "kind": "batch", "emails": [{...}, ...], "ids": ["ev_...", ...],
     "idempotency_key": "emailqueue-<job id>", "event_id": "<str>"}

``ids`` are the per-recipient job ids: a recipient Resend rejects becomes a failed job of its own
under that id. Single emails stay version 1, so older workers keep delivering them.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from ._constants import IDEMPOTENCY_KEY_PREFIX, JOB_FUNC_PATH
from ._exceptions import PermanentSendError

EMAIL_VERSION = 1
BATCH_VERSION = 2
MAX_BATCH = 100  # Resend: POST /emails/batch takes at most 100 emails


@dataclass(frozen=True)
class Payload:
    """A parsed, version-checked job payload: one email, or a batch of personal emails."""

    emails: list[dict[str, Any]]
    idempotency_key: str
    event_id: str | None = None
    ids: list[str] = field(default_factory=list)
    batch: bool = False

    @classmethod
    def single(cls, email: dict[str, Any], idempotency_key: str, event_id: str | None = None) -> Payload:
        return cls([email], idempotency_key, event_id)

    @property
    def email(self) -> dict[str, Any]:
        return self.emails[0]

    def to_json(self) -> dict[str, Any]:
        if not self.batch:
            return {
                "v": EMAIL_VERSION,
                "kind": "email",
                "email": self.email,
                "idempotency_key": self.idempotency_key,
                "event_id": self.event_id,
            }
        return {
            "v": BATCH_VERSION,
            "kind": "batch",
            "emails": self.emails,
            "ids": self.ids,
            "idempotency_key": self.idempotency_key,
            "event_id": self.event_id,
        }

    @property
    def recipients(self) -> list[str]:
        out: list[str] = []
        for email in self.emails:
            to = email.get("to", [])
            out += [to] if isinstance(to, str) else list(to)
        return out


#: The job hash field that marks a single email the batch endpoint can carry (set at enqueue).
PACK_FIELD = "emailqueue_pack"
#: What POST /emails/batch refuses in an email (docs/PLATFORM.md, "Resend: batch").
NOT_IN_BATCH = ("attachments", "scheduled_at")


def packable(payload: Payload) -> bool:
    """Whether a job's email may ride in a pack: a single email (not a fan-out chunk) with
    nothing the batch endpoint refuses (no attachments, no ``scheduled_at``)."""
    return not payload.batch and not any(name in payload.email for name in NOT_IN_BATCH)


def idempotency_key_for(job_id: str) -> str:
    """The Idempotency-Key of a job: fixed at enqueue, the same on every retry and after a crash."""
    return IDEMPOTENCY_KEY_PREFIX + job_id


def _bad(reason: str) -> PermanentSendError:
    return PermanentSendError(f"malformed job payload: {reason}", name="bad_payload")


def _check_email(email: Any, where: str) -> dict[str, Any]:
    if not isinstance(email, dict) or not email.get("to") or not email.get("subject"):
        raise _bad(f"{where} must be an object with 'to' and 'subject'")
    return email


def parse_payload(raw: Any) -> Payload:
    """Check and parse a payload read back from a job.

    Raises:
        PermanentSendError: (name ``bad_payload``) the payload is malformed or of an unknown
            version; retrying cannot fix it, so the job fails alone with this reason.
    """
    if not isinstance(raw, dict):
        raise _bad(f"expected a JSON object, got {type(raw).__name__}")
    version, key = raw.get("v"), raw.get("idempotency_key")
    if version not in (EMAIL_VERSION, BATCH_VERSION):
        raise _bad(f"unknown payload version {version!r}; this worker understands 1 and 2")
    if not isinstance(key, str) or not 1 <= len(key) <= 256:
        raise _bad("'idempotency_key' must be a string of 1-256 characters")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    if version == EMAIL_VERSION:
        return Payload.single(_check_email(raw.get("email"), "'email'"), key, event_id)
    emails, ids = raw.get("emails"), raw.get("ids")
    if not isinstance(emails, list) or not 1 <= len(emails) <= MAX_BATCH:
        raise _bad(f"'emails' must be a list of 1-{MAX_BATCH} emails")
    if not isinstance(ids, list) or len(ids) != len(emails) or not all(isinstance(i, str) for i in ids):
        raise _bad("'ids' must list one job id per email")
    checked = [_check_email(e, f"emails[{i}]") for i, e in enumerate(emails)]
    return Payload(checked, key, event_id, list(ids), batch=True)


def decode_job_data(data: bytes | None) -> dict[str, Any]:
    """The kwargs of a job hash's ``data`` field (RQ's zlib-compressed JSON call), or a
    permanent error saying why not.

    Only our JSON-serialized ``deliver`` jobs pass: a pickle payload, or any other function on
    this queue, is refused, never executed.

    Raises:
        PermanentSendError: ``bad_payload``.
    """
    try:
        func, _instance, args, kwargs = json.loads(zlib.decompress(data or b""))
    except Exception:
        raise PermanentSendError(
            "job data is not a JSON-serialized RQ call (pickle?)", name="bad_payload"
        ) from None
    if func != JOB_FUNC_PATH or args or not isinstance(kwargs, dict) or "payload" not in kwargs:
        raise PermanentSendError(f"not an emailqueue job ({str(func)[:80]})", name="bad_payload")
    return dict(kwargs)
