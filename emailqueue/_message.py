"""The email model: Resend's ``POST /emails`` fields, validated before anything touches Redis.

Limits come from Resend (docs/PLATFORM.md, "Resend"): 1-50 ``to`` addresses, tag names and
values of ``[A-Za-z0-9_-]`` up to 256 characters, base64 attachments, 40 MB per email after
encoding, ``scheduled_at`` at most 30 days ahead.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._exceptions import FieldProblem, InvalidEmailError
from ._redact import split_address

MAX_RECIPIENTS = 50  # Resend: `to` takes at most 50 addresses
MAX_TOTAL_BYTES = 40 * 1024 * 1024  # Resend: 40 MB per email after base64
MAX_TAGS = 50  # our own bound: Resend sets none, and a huge list is a bug upstream
MAX_TAG_CHARS = 256
MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_HEADER_CHARS = 998  # RFC 5322: a header line is at most 998 characters

_TAG_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# RFC 5322 field name: printable ASCII except ':' and space.
_HEADER_NAME_RE = re.compile(r"^[!-9;-~]+$")


#: Line breaks and controls that split or truncate a header somewhere along the way: CR, LF, the
#: other C0 controls but TAB (NUL truncates in C mail servers; VT and FF are line breaks to
#: Python's email package), DEL, NEL and the Unicode line and paragraph separators.
_HEADER_BREAKERS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _no_crlf(value: str) -> str:
    if _HEADER_BREAKERS.search(value):
        raise ValueError("must not contain CR, LF or other control characters (header injection)")
    return value


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8 text") from None
    return value


def check_address(value: str) -> str:
    """Validate one address (``Name <a@b.c>`` allowed) and return it stripped."""
    # Imported here: the cron function never validates an address, and cold starts count.
    from email_validator import EmailNotValidError, validate_email

    if not isinstance(value, str):
        raise ValueError("must be an address string")
    if len(value) > MAX_HEADER_CHARS:
        raise ValueError(f"is longer than {MAX_HEADER_CHARS} characters")
    _no_crlf(_utf8(value))
    name, addr = split_address(value)
    if any(c in name for c in '<>"'):
        raise ValueError('the display name must not contain <, > or " (write: Name <addr@example.com>)')
    try:
        validate_email(addr, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{addr!r} is not a valid email address ({exc})") from None
    return value.strip()


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


#: One address, validated on its own so an error names its index (``to[3]``).
Address = Annotated[str, AfterValidator(check_address)]


class Tag(BaseModel):
    """A Resend tag: ``name`` and ``value`` of ASCII letters, digits, ``_`` and ``-``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)

    name: str = Field(min_length=1, max_length=MAX_TAG_CHARS)
    value: str = Field(min_length=1, max_length=MAX_TAG_CHARS)

    @field_validator("name", "value")
    @classmethod
    def _charset(cls, value: str) -> str:
        if not _TAG_RE.match(value):
            raise ValueError("may use only ASCII letters, digits, '_' and '-'")
        return value


class Attachment(BaseModel):
    """An attachment: base64 ``content`` or a URL ``path``, exactly one of them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)

    filename: str = Field(min_length=1, max_length=255)
    content: str | None = None
    path: str | None = None
    content_type: str | None = None
    content_id: str | None = None

    @field_validator("filename", "content_type", "content_id")
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        return None if value is None else _no_crlf(_utf8(value))

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64-encoded (base64.b64encode(data).decode())") from None
        return value

    @field_validator("path")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL Resend can fetch")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        if (self.content is None) == (self.path is None):
            raise ValueError("give exactly one of content (base64) or path (a URL)")
        return self


class EmailMessage(BaseModel):
    """One email, as Resend's ``POST /emails`` takes it.

    ``from`` is spelled ``from_`` in Python; ``send_at`` maps to Resend's ``scheduled_at``.
    Build it directly or let :func:`emailqueue.send_email` build it from keywords.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, populate_by_name=True, defer_build=True
    )

    from_: Address | None = Field(default=None, alias="from")
    to: list[Address]
    subject: str
    html: str | None = None
    text: str | None = None
    cc: list[Address] | None = None
    bcc: list[Address] | None = None
    reply_to: list[Address] | None = None
    headers: dict[str, str] | None = None
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)
    attachments: list[Attachment] | None = None
    send_at: datetime | None = None

    @field_validator("to", "cc", "bcc", "reply_to", mode="before")
    @classmethod
    def _listify_and_count(cls, value: Any, info: ValidationInfo) -> Any:
        value = _as_list(value)
        if isinstance(value, list):
            if info.field_name == "to" and not value:
                raise ValueError("needs at least one recipient")
            if len(value) > MAX_RECIPIENTS:
                raise ValueError(
                    f"has {len(value)} addresses; Resend allows at most {MAX_RECIPIENTS} "
                    "(use send_event_email for one personal email per recipient)"
                )
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        _no_crlf(_utf8(value))
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("html", "text")
    @classmethod
    def _body(cls, value: str | None) -> str | None:
        return None if value is None else _utf8(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, header in (value or {}).items():
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"header name {name!r} must be printable ASCII without ':' or spaces")
            try:
                _no_crlf(_utf8(header))
            except ValueError as exc:
                raise ValueError(f"header {name!r} {exc}") from None
            if len(header) > MAX_HEADER_CHARS:
                raise ValueError(f"header {name!r} is longer than {MAX_HEADER_CHARS} characters")
        return value

    @field_validator("send_at")
    @classmethod
    def _send_at(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("must be timezone-aware (e.g. datetime.now(UTC) + timedelta(hours=1))")
        if value - datetime.now(UTC) > MAX_SCHEDULE_AHEAD:
            raise ValueError("may be at most 30 days ahead (Resend's scheduled_at limit)")
        return value

    @model_validator(mode="after")
    def _content_and_size(self) -> EmailMessage:
        if not (self.html or self.text):
            raise ValueError("html/text: give html or text (or both); an email needs a body")
        size = approximate_size(self)
        if size > MAX_TOTAL_BYTES:
            raise ValueError(f"the email is {size / 1e6:.1f} MB; Resend accepts at most 40 MB after base64")
        return self

    def to_resend(self, default_from: str | None = None) -> dict[str, Any]:
        """The JSON body of Resend's ``POST /emails`` (``send_at`` becomes ``scheduled_at``)."""
        body: dict[str, Any] = self.model_dump(by_alias=True, exclude_none=True, exclude={"send_at"})
        if "from" not in body and default_from:
            body["from"] = default_from
        if self.send_at is not None:
            body["scheduled_at"] = self.send_at.isoformat()
        return body


def approximate_size(message: EmailMessage) -> int:
    """Bytes of text and base64 content: what Resend's 40 MB limit counts."""
    size = sum(
        len((s or "").encode("utf-8", "replace")) for s in (message.html, message.text, message.subject)
    )
    size += sum(len(a.content or "") for a in message.attachments or [])
    size += sum(
        len(k.encode("utf-8", "replace")) + len(v.encode("utf-8", "replace"))
        for k, v in (message.headers or {}).items()
    )
    return size


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            part = "from" if part == "from_" else part
            name += f".{part}" if name else part
    return name or "message"


def problems_from(exc: ValidationError) -> list[FieldProblem]:
    """Turn pydantic's errors into our field-named problems, with plain messages."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        message = str(err["msg"]).removeprefix("Value error, ")
        field = _field_name(err["loc"])
        if err["type"] == "extra_forbidden":
            message = "is not a field of an email (check the spelling; see EmailMessage)"
        if field == "message" and message.startswith("html/text: "):
            field, message = "html/text", message.removeprefix("html/text: ")
        problems.append(FieldProblem(field, message))
    return problems


def build_message(data: EmailMessage | dict[str, Any], default_from: str | None = None) -> EmailMessage:
    """Validate ``data`` into an :class:`EmailMessage` whose sender is known.

    Raises:
        InvalidEmailError: listing every problem with its field.
    """
    problems: list[FieldProblem] = []
    message: EmailMessage | None = None
    if isinstance(data, EmailMessage):
        message = data
    else:
        try:
            message = EmailMessage.model_validate(data)
        except ValidationError as exc:
            problems = problems_from(exc)
            if not (data.get("html") or data.get("text")) and "html/text" not in {p.field for p in problems}:
                problems.append(
                    FieldProblem("html/text", "give html or text (or both); an email needs a body")
                )
    sender = (
        message.from_ if message else data.get("from", data.get("from_")) if isinstance(data, dict) else None
    )
    if not sender and not default_from:
        problems.append(FieldProblem("from", "no sender: pass from_=... or set EMAIL_FROM"))
    if problems:
        raise InvalidEmailError(problems)
    assert message is not None
    return message
