"""What the status API shows of a failed job or a worker, read from raw Redis replies.

A failed job shows masked recipients, its subject and its error: never its body or a secret.

A job failed by emailqueue (the drain, or ``deliver`` under a VM worker) carries our record in
``job.meta["emailqueue"]``. One failed by RQ itself (a crash before our code ran, a foreign job)
has only RQ's traceback, kept in its results stream (``rq:results:<id>``, RQ 3): the last line
of that becomes the reason.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass
from typing import Any, Final

from rq.utils import parse_composite_key
from rq.worker import Worker

from ._failure import read_record
from ._payload import decode_job_data
from ._redact import mask_email, redact_text

#: Longest error message shown for one failed job.
MAX_MESSAGE_CHARS: Final = 300
#: The job hash fields :func:`read_failed_job` reads, in order.
JOB_FIELDS: Final = ("data", "meta", "ended_at")


@dataclass(frozen=True)
class WorkerInfo:
    """An RQ worker registered on the queue (VM workers; the drain registers none)."""

    name: str
    state: str | None
    last_heartbeat: str | None
    current_job: str | None


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job failed: Resend's error name (or the exception's), a redacted message, the status."""

    name: str
    message: str
    status_code: int | None = None


@dataclass(frozen=True)
class FailedJob:
    """One failed job, safe to show: masked recipients, no body."""

    id: str
    to: list[str]
    subject: str | None
    error: ErrorInfo
    attempts: int | None
    failed_at: str | None
    requeued: int = 0


def scrub_text(text: str) -> str:
    """Mask addresses, URL credentials and Resend keys in free text, and shorten it."""
    text = redact_text(text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def text_of(value: Any) -> str:
    """A Redis reply as ``str``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def needs_rq_reason(fields: list[Any]) -> bool:
    """Whether the job (its hash's :data:`JOB_FIELDS`) exists but has no error record of ours."""
    exists = fields[0] is not None or fields[1] is not None
    return exists and read_record(fields[1]).get("error") is None


def exc_string_of(stream_reply: Any) -> str:
    """RQ's traceback from an ``XREVRANGE rq:results:<id> + - COUNT 1`` reply, or ``""``."""
    try:
        _id, payload = stream_reply[0]
        return zlib.decompress(base64.b64decode(payload[b"exc_string"])).decode("utf-8", "replace")
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error, zlib.error):
        return ""


def read_failed_job(job_id: str, fields: list[Any], exc_string: str = "") -> FailedJob | None:
    """A :class:`FailedJob` from the job hash's :data:`JOB_FIELDS` (and RQ's traceback, when the
    job has no error record of ours), or ``None`` if the hash is gone."""
    data, meta_raw, ended_at = fields
    if data is None and meta_raw is None:
        return None  # the hash expired with its failure TTL
    emails = _emails_of(data)
    record = read_record(meta_raw)
    error = record.get("error")
    if error is not None:
        info = ErrorInfo(
            name=error["name"], message=scrub_text(error["message"]), status_code=error["status_code"]
        )
    else:
        info = _reason(exc_string)
    recipients = [r for email in emails for r in _as_list(email.get("to"))]
    subject = emails[0].get("subject") if emails else None
    attempts = record.get("attempts")
    failed_at = record.get("failed_at") or (text_of(ended_at) if ended_at else None)
    return FailedJob(
        id=job_id,
        to=[mask_email(str(r)) for r in recipients],
        subject=scrub_text(str(subject)) if subject is not None else None,
        error=info,
        attempts=attempts,
        failed_at=str(failed_at) if failed_at else None,
        requeued=record.get("requeued", 0),
    )


def _emails_of(data: bytes | None) -> list[dict[str, Any]]:
    """The Resend emails of an emailqueue job's data: one (payload v1, ``email``) or a batch
    (v2, ``emails``); none for anything else (pickle, a foreign job)."""
    try:
        payload = decode_job_data(data)["payload"]
        emails = payload["emails"] if "emails" in payload else [payload["email"]]
    except Exception:
        return []
    return [e for e in emails if isinstance(e, dict)] if isinstance(emails, list) else []


def _as_list(to: Any) -> list[Any]:
    return [to] if isinstance(to, str) else to if isinstance(to, list) else []


def _reason(exc_string: str) -> ErrorInfo:
    """A short reason for a job RQ failed itself (no emailqueue record): the traceback's last line."""
    lines = [line.strip() for line in exc_string.splitlines() if line.strip()]
    if not lines:
        return ErrorInfo(name="unknown_error", message="failed without a recorded reason")
    name, sep, message = lines[-1].partition(":")
    if not sep or " " in name.strip():
        return ErrorInfo(name="error", message=scrub_text(lines[-1]))
    return ErrorInfo(name=name.strip().rsplit(".", 1)[-1], message=scrub_text(message.strip()))


def worker_name(key: str) -> str:
    """``rq:worker:<name>`` -> ``<name>``."""
    return key.removeprefix(Worker.redis_worker_namespace_prefix)


def read_worker(key: str, fields: list[Any], executions: set[Any]) -> WorkerInfo | None:
    """A :class:`WorkerInfo` from ``HMGET <key> state last_heartbeat`` and its executions set."""
    state, heartbeat = fields
    if state is None and heartbeat is None:
        return None  # registered but its hash expired: a dead worker RQ has not swept yet
    current = sorted(parse_composite_key(text_of(m))[0] for m in executions)
    return WorkerInfo(
        name=worker_name(key),
        state=text_of(state) if state is not None else None,
        last_heartbeat=text_of(heartbeat) if heartbeat is not None else None,
        current_job=current[0] if current else None,
    )
