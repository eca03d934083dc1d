"""What goes over the wire of the fake Resend: the records it keeps, its replies, and Resend's
rules for a valid email (docs/PLATFORM.md, "Resend").
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

EMAILS, BATCH = "/emails", "/emails/batch"
MAX_RECIPIENTS = 50  # `to`: a string or 1-50 addresses
MAX_BATCH = 100
MAX_KEY_LENGTH = 256  # Idempotency-Key: 1-256 characters
DEFAULT_RATE_LIMIT = 2  # recorded replies show `ratelimit-limit: 2`
_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class AcceptedEmail:
    """One email the fake accepted, i.e. "sent".

    ``idempotency_key`` is the request's Idempotency-Key (for a batch item, the batch's key);
    ``headers`` are the HTTP request's headers, names lower-cased; ``batch_index`` is the
    email's position in its batch, or None when it came through ``/emails``.
    """

    id: str
    idempotency_key: str | None
    payload: dict[str, Any]
    headers: dict[str, str]
    batch: bool
    batch_index: int | None = None

    @property
    def to(self) -> list[str]:
        to = self.payload["to"]
        return [to] if isinstance(to, str) else list(to)

    @property
    def subject(self) -> str:
        return str(self.payload["subject"])


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the fake answered, with the status it replied (header names lower-cased;
    status 0: the connection was closed with no reply, see ``drop_after_accept``)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class Gate:
    """Holds one request in flight, before it is accepted; made by :meth:`FakeResend.hold`."""

    def __init__(self) -> None:
        self.arrived = threading.Event()  # set once a request is waiting here
        self._released = threading.Event()

    def release(self) -> None:
        """Let the held request (or the one still to come) go on."""
        self._released.set()

    def wait_for_release(self) -> None:
        """Block the held request until :meth:`release`."""
        self._released.wait()

    set = release  # so a Gate can stand where a plain threading.Event is expected

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # extra seconds before the reply is written (a reply lost after accept)
    drop: bool = False  # accepted, then the connection is closed with no reply at all


@dataclass(frozen=True)
class Call:
    """A routed, authenticated, parsed request, ready to be processed."""

    path: str
    headers: dict[str, str]
    data: Any
    key: str | None
    late: float  # reply delay drawn by set_error_rate's p_timeout; applies only if accepted

    @property
    def fingerprint(self) -> str:
        return self.path + json.dumps(self.data, sort_keys=True, separators=(",", ":"))


def json_reply(status: int, obj: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, json.dumps(obj).encode(), headers)


def error_reply(status: int, name: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return json_reply(status, {"statusCode": status, "name": name, "message": message}, headers)


def retry_headers(status: int, retry_after: float | None, limit: int) -> tuple[tuple[str, str], ...]:
    if status == 429 and retry_after is None:
        retry_after = 1.0
    if retry_after is None:
        return ()
    seconds = str(int(retry_after)) if retry_after == int(retry_after) else str(retry_after)
    headers = [("retry-after", seconds)]
    if status == 429:
        reset = str(max(1, math.ceil(retry_after)))
        headers += [("ratelimit-limit", str(limit)), ("ratelimit-remaining", "0")]
        headers += [("ratelimit-reset", reset), ("ratelimit-policy", f"{limit};w=1")]
    return tuple(headers)


def _is_tag(tag: dict[str, Any]) -> bool:
    return all(isinstance(tag.get(k), str) and _TAG.fullmatch(tag[k]) for k in ("name", "value"))


def problem_of(email: object, rejected: frozenset[str]) -> tuple[str, str] | None:
    """Why Resend would refuse ``email``, as (error name, message); None if it is valid."""
    if not isinstance(email, dict):
        return "validation_error", "An email must be a JSON object."
    return _missing(email) or _wrong_types(email) or _bad_recipients(email, rejected)


def _missing(email: dict[str, Any]) -> tuple[str, str] | None:
    for name in ("from", "to", "subject"):
        if email.get(name) in (None, "", []):
            return "missing_required_field", f"The `{name}` field is missing."
    if not email.get("html") and not email.get("text"):
        return "missing_required_field", "The `html` or `text` field is missing; give at least one."
    return None


def _wrong_types(email: dict[str, Any]) -> tuple[str, str] | None:
    for name in ("from", "subject"):
        if not isinstance(email[name], str):
            return "validation_error", f"The `{name}` field must be a string."
    tags = email.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, dict) and _is_tag(t) for t in tags):
        return "validation_error", "Each tag needs a `name` and `value` of ASCII letters, digits, _ or -."
    return None


def _bad_recipients(email: dict[str, Any], rejected: frozenset[str]) -> tuple[str, str] | None:
    to = email["to"]
    to = [to] if isinstance(to, str) else to
    if not (isinstance(to, list) and 1 <= len(to) <= MAX_RECIPIENTS and all(isinstance(a, str) for a in to)):
        return "validation_error", f"The `to` field must be an address or 1-{MAX_RECIPIENTS} addresses."
    if rejected.intersection(to):
        return "validation_error", "invalid recipient"
    return None


def parse_call(path: str, headers: dict[str, str], body: bytes, late: float) -> Reply | Call:
    key = headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        message = f"The Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters."
        return error_reply(400, "invalid_idempotency_key", message)
    try:
        data = json.loads(body)
    except ValueError:
        return error_reply(422, "validation_error", "The request body must be valid JSON.")
    return Call(path, headers, data, key, late)
