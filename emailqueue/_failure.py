"""The failure record a job keeps in ``job.meta["emailqueue"]``: one type, one writer, one reader.

Whoever fails or retries a job (the retry policy under a VM worker or a drain, the drain's
recovery of an abandoned job, an unreadable job, a recipient Resend rejected from a batch, a
requeue) builds the record with :func:`failure_record` or :func:`requeue_record`; the status
API reads it with :func:`read_record`.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any, TypedDict

from rq.job import Job

from ._constants import META_KEY


class ErrorRecord(TypedDict):
    """Why the last attempt failed: Resend's error name (or ours), its message, its HTTP status."""

    name: str
    message: str
    status_code: int | None


class FailureRecord(TypedDict, total=False):
    """``error``: the last error (None after a requeue); ``attempts``: failed attempts since the
    last requeue; ``failed_at``: ISO time of the last counted failure; ``next_retry_in_s``: the
    scheduled retry, None if none; ``requeued``: how often it was requeued; ``past_attempts``:
    attempts spent before the last requeue; ``maybe_sent``: a send of it failed ambiguously (a
    timeout, a lost reply, a 5xx), so Resend may have accepted it (see ``_retry``);
    ``window_from``: Unix time of a requeue after which no earlier send counts (see
    :func:`key_window_start`)."""

    error: ErrorRecord | None
    attempts: int
    failed_at: str | None
    next_retry_in_s: int | None
    requeued: int
    past_attempts: int
    maybe_sent: bool
    window_from: int


def read_record(meta: Any) -> FailureRecord:
    """The record in a job's meta (a dict, or the raw JSON of the ``meta`` hash field); empty
    if there is none or it is unreadable. Fields of the wrong type are left out."""
    record = _loads(meta).get(META_KEY)
    if not isinstance(record, dict):
        return {}
    out: FailureRecord = {}
    error = record.get("error")
    if isinstance(error, dict):
        status = error.get("status_code")
        out["error"] = {
            "name": str(error.get("name") or "unknown_error"),
            "message": str(error.get("message") or ""),
            "status_code": status if isinstance(status, int) else None,
        }
    _copy_ints(record, out)
    if isinstance(record.get("failed_at"), str):
        out["failed_at"] = record["failed_at"]
    if record.get("maybe_sent") is True:
        out["maybe_sent"] = True
    return out


def _loads(meta: Any) -> dict[str, Any]:
    if isinstance(meta, bytes | str):
        try:
            meta = json.loads(meta or "{}")
        except ValueError:
            return {}
    return meta if isinstance(meta, dict) else {}


def _copy_ints(record: dict[str, Any], out: FailureRecord) -> None:
    if isinstance(record.get("attempts"), int):
        out["attempts"] = record["attempts"]
    if isinstance(record.get("requeued"), int):
        out["requeued"] = record["requeued"]
    if isinstance(record.get("past_attempts"), int):
        out["past_attempts"] = record["past_attempts"]
    if isinstance(record.get("next_retry_in_s"), int):
        out["next_retry_in_s"] = record["next_retry_in_s"]
    if isinstance(record.get("window_from"), int):
        out["window_from"] = record["window_from"]


def attempts_of(meta: Any) -> int:
    """Failed attempts recorded in a job's meta (0 before the first failure)."""
    return read_record(meta).get("attempts", 0)


def maybe_sent_of(meta: Any) -> bool:
    """Whether a send of the job failed ambiguously before: Resend may have accepted it."""
    return read_record(meta).get("maybe_sent", False)


def failure_record(
    meta: Any,
    *,
    name: str,
    message: str,
    status_code: int | None = None,
    next_retry_in_s: int | None = None,
    count_attempt: bool = True,
    maybe_sent: bool = False,
) -> FailureRecord:
    """The record after a failure. What the previous record held (requeue counts, ``maybe_sent``)
    is kept; a counted attempt bumps ``attempts`` and stamps ``failed_at``."""
    record = read_record(meta)
    record["error"] = {"name": name, "message": message, "status_code": status_code}
    record["next_retry_in_s"] = next_retry_in_s
    if maybe_sent:
        record["maybe_sent"] = True
    if count_attempt:
        record["attempts"] = record.get("attempts", 0) + 1
        record["failed_at"] = datetime.now(UTC).isoformat()
    return record


def requeue_record(meta: Any, *, now: float, maybe_sent: bool = True) -> FailureRecord:
    """The record of a job put back on the queue at ``now`` (Unix time): no error, attempts
    counted as past ones. ``maybe_sent=False`` forgets that Resend may have it (a forced
    requeue: send it anyway). A job Resend may not have starts a new key window at ``now``:
    no earlier send of it can have been accepted, so only the sends from now on count."""
    old = read_record(meta)
    record: FailureRecord = {
        "error": None,
        "attempts": 0,
        "requeued": old.get("requeued", 0) + 1,
        "past_attempts": old.get("past_attempts", 0) + old.get("attempts", 0),
    }
    if maybe_sent and old.get("maybe_sent"):
        record["maybe_sent"] = True  # the key's earlier sends still count: Resend may have it
        if "window_from" in old:
            record["window_from"] = old["window_from"]
    else:
        record["window_from"] = math.floor(now)
    return record


def key_window_start(meta: Any, created_at: float) -> float:
    """When the sends that count for the job's Idempotency-Key began, at the earliest: its
    creation, or a later requeue that started over (``window_from``). Resend's 24 h memory of
    a send that may have been accepted is measured from here (see ``_retry``)."""
    return max(created_at, float(read_record(meta).get("window_from", 0)))


def meta_with(meta: Any, record: FailureRecord) -> str:
    """The job's whole ``meta`` field, as JSON, with ``record`` in it (other keys kept)."""
    full = dict(_loads(meta))
    full[META_KEY] = dict(record)
    return json.dumps(full)


def record_on(job: Job, record: FailureRecord, *, save: bool = False) -> None:
    """Put ``record`` on a job RQ holds in memory (RQ saves it with the job), and save it now."""
    job.meta[META_KEY] = dict(record)
    if save:
        job.save_meta()  # type: ignore[no-untyped-call]
