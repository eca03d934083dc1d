"""Hostile input at enqueue: every case raises ``InvalidEmailError`` naming the field (or ``TypeError``
for a malformed Python call) and writes **0 keys**, on fakeredis and on the real server.

tests/test_message.py covers the basics (CRLF in subject/to/one header value, one bad header name,
51 ``to``, one 40 MB attachment, a lone surrogate in ``text``, ...). These are the cases beyond it.

Which characters count as header injection? CR and LF, always. We also want every other control
character (NUL, VT, FF, ESC, ...; C0 except TAB, DEL, C1's NEL) and U+2028/U+2029 refused in the
fields that become header lines (subject, header values, display names): Python's ``email``
package and ``str.splitlines()`` split lines on VT, FF, FS/GS/RS, NEL, U+2028 and U+2029, NUL
truncates header values in C-based MTAs, and none of them has a legitimate use in a one-line
header. All of them are refused.
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from emailqueue import EmailMessage, InvalidEmailError, Settings, send_email, send_event_email

GOOD: dict[str, Any] = {"to": "ada@example.com", "subject": "Hello", "html": "<p>Hi</p>"}
MB = 1024 * 1024
B64 = base64.b64encode(b"%PDF-1.7").decode()
LONE = "\udcff"  # a lone surrogate: a str Python holds, but no valid UTF-8


@dataclass(frozen=True)
class Case:
    """A hostile ``send_email`` call. ``fields`` is built lazily (some cases hold 40+ MB)."""

    fields: Callable[[], dict[str, Any]]
    field: tuple[str, ...]  # the problem must name one of these


def case(field: str | tuple[str, ...], **changes: Any) -> Case:
    return Case(lambda: {**GOOD, **changes}, (field,) if isinstance(field, str) else field)


def big(field: str | tuple[str, ...], build: Callable[[], dict[str, Any]]) -> Case:
    return Case(lambda: {**GOOD, **build()}, (field,) if isinstance(field, str) else field)


def attachment(**fields: Any) -> dict[str, Any]:
    return {"attachments": [{"filename": "a.pdf", "content": B64, **fields}]}


INJECTION = "\r\nBcc: victim@example.com"
INVALID: dict[str, Case] = {
    # --- header injection (CR/LF) in every field that becomes a header line ---
    "LF only in subject": case("subject", subject="Hi\nBcc: victim@example.com"),
    "CR only in subject": case("subject", subject="Hi\rBcc: victim@example.com"),
    "CRLF in cc": case("cc[0]", cc="a@example.com" + INJECTION),
    "LF in the second bcc": case("bcc[1]", bcc=["ok@example.com", "a@example.com\nBcc: v@example.com"]),
    "CR in reply_to": case("reply_to[0]", reply_to="a@example.com\rBcc: v@example.com"),
    "CRLF in from": case("from", from_="app@example.com" + INJECTION),
    "CRLF in from's display name": case("from", from_=f"Ada{INJECTION} <ada@example.com>"),
    "CRLF in to's display name": case("to[0]", to=f"Ada{INJECTION} <ada@example.com>"),
    "NUL in an address": case("to[0]", to="ada\x00@example.com"),
    "header name with a colon": case("headers", headers={"X-Ref:": "1"}),
    "header name with CRLF": case("headers", headers={"X-Ref\r\nBcc": "v@example.com"}),
    "header name non-ASCII": case("headers", headers={"X-Réf": "1"}),
    "empty header name": case("headers", headers={"": "1"}),
    "LF in a header value": case("headers", headers={"X-Ref": "1\nBcc: v@example.com"}),
    "CRLF in attachment filename": case(
        "attachments[0].filename", **attachment(filename="a.pdf" + INJECTION)
    ),
    "CRLF in attachment content_type": case(
        "attachments[0].content_type", **attachment(content_type="text/plain" + INJECTION)
    ),
    "CRLF in attachment content_id": case(
        "attachments[0].content_id", **attachment(content_id="x" + INJECTION)
    ),
    "a second address smuggled after a comma": case("to[0]", to="a@example.com, victim@example.com"),
    "two angle-bracket addresses": case("to[0]", to="Ada <victim@example.com> <ada@example.com>"),
    # --- oversized: Resend takes at most 40 MB per email after base64 ---
    "html over 40 MB": big("message", lambda: {"html": "a" * (40 * MB + 1)}),
    "html + text over 40 MB": big("message", lambda: {"html": "a" * (21 * MB), "text": "b" * (20 * MB)}),
    "two attachments over 40 MB": big(
        "message",
        lambda: {"attachments": [{"filename": f"{i}.bin", "content": "A" * (21 * MB)} for i in range(2)]},
    ),
    "subject over 40 MB": big("message", lambda: {"subject": "s" * (40 * MB + 1)}),
    # --- recipients: at most 50 in each list ---
    "51 cc": case("cc", cc=[f"u{i}@example.com" for i in range(51)]),
    "51 bcc": case("bcc", bcc=[f"u{i}@example.com" for i in range(51)]),
    "51 reply_to": case("reply_to", reply_to=[f"u{i}@example.com" for i in range(51)]),
    # --- not UTF-8: a lone surrogate in each text field ---
    "lone surrogate in subject": case("subject", subject=f"Hi {LONE}"),
    "lone surrogate in html": case("html", html=f"<p>{LONE}</p>"),
    "lone surrogate in to": case("to[0]", to=f"a{LONE}@example.com"),
    "lone surrogate in cc": case("cc[0]", cc=[f"a{LONE}@example.com"]),
    "lone surrogate in bcc": case("bcc[0]", bcc=[f"a{LONE}@example.com"]),
    "lone surrogate in reply_to": case("reply_to[0]", reply_to=f"a{LONE}@example.com"),
    "lone surrogate in from": case("from", from_=f"a{LONE}@example.com"),
    "lone surrogate in a display name": case("to[0]", to=f"Ada {LONE} <ada@example.com>"),
    "lone surrogate in a header value": case("headers", headers={"X-Ref": LONE}),
    "lone surrogate in a header name": case("headers", headers={f"X-{LONE}": "1"}),
    "lone surrogate in attachment filename": case("attachments[0].filename", **attachment(filename=LONE)),
    "lone surrogate in attachment content_type": case(
        "attachments[0].content_type", **attachment(content_type=LONE)
    ),
    "lone surrogate in a tag": case("tags[0].value", tags=[{"name": "kind", "value": LONE}]),
    # --- wrong types (strict: nothing is coerced) ---
    "dict to": case("to", to={"ada@example.com": "Ada"}),
    "list of ints to": case("to[0]", to=[1, 2]),
    "None to": case("to", to=None),
    "bytes to": case("to", to=b"ada@example.com"),
    "bytes subject": case("subject", subject=b"Hello"),
    "bytes html": case("html", html=b"<p>Hi</p>"),
    "float text": case("text", text=1.5),
    "int in a cc list": case("cc[0]", cc=[42]),
    "headers as a list": case("headers", headers=["X-Ref: 1"]),
    "int header value": case("headers.X-Ref", headers={"X-Ref": 1}),
    "tags as one dict": case("tags", tags={"name": "kind", "value": "x"}),
    "attachments as one dict": case("attachments", attachments={"filename": "a.pdf", "content": B64}),
    "send_at as a string": case("send_at", send_at="2030-01-01T00:00:00Z"),
    "send_at as a Unix time": case("send_at", send_at=1_900_000_000),
    # --- unknown fields ---
    "Resend's scheduled_at instead of send_at": case("scheduled_at", scheduled_at="2030-01-01T00:00:00Z"),
    "unknown field in a tag": case("tags[0].extra", tags=[{"name": "a", "value": "b", "extra": "c"}]),
    "unknown field in an attachment": case("attachments[0].url", **attachment(url="https://x.example/a")),
    # --- tags ---
    "10,000 tags": case("tags", tags=[{"name": f"t{i}", "value": "v"} for i in range(10_000)]),
    "tag name of 257 chars": case("tags[0].name", tags=[{"name": "n" * 257, "value": "v"}]),
    "tag value of 257 chars": case("tags[0].value", tags=[{"name": "n", "value": "v" * 257}]),
    "empty tag name": case("tags[0].name", tags=[{"name": "", "value": "v"}]),
    # --- attachments ---
    "attachment with content and path": case("attachments[0]", **attachment(path="https://x.example/a.pdf")),
    "attachment path file:///etc/passwd": case(
        "attachments[0].path", attachments=[{"filename": "passwd", "path": "file:///etc/passwd"}]
    ),
    "attachment path javascript:": case(
        "attachments[0].path", attachments=[{"filename": "a", "path": "javascript:alert(1)"}]
    ),
    "attachment path scheme-relative": case(
        "attachments[0].path", attachments=[{"filename": "a", "path": "//evil.example/a.pdf"}]
    ),
    "attachment path ftp:": case("attachments[0].path", attachments=[{"filename": "a", "path": "ftp://x/a"}]),
    "attachment filename empty": case("attachments[0].filename", **attachment(filename="")),
    "attachment filename of 256 chars": case("attachments[0].filename", **attachment(filename="f" * 256)),
    # --- send_at ---
    "send_at 30 days and a minute ahead": big(  # built at call time: "now" must be the test's now
        "send_at", lambda: {"send_at": datetime.now(UTC) + timedelta(days=30, minutes=1)}
    ),
    "send_at naive, in the past": case("send_at", send_at=datetime(2020, 1, 1)),
}


@pytest.fixture
def settings() -> Settings:
    """Enqueue-only settings: no Resend (nothing here may be sent), no .env file."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        queue_redis_url="redis://127.0.0.1:1/0",
        email_from="App <app@example.com>",
    )


@pytest.fixture
def canary(conn: redis.Redis) -> int:
    """An app key already in Redis, so "0 keys written" is measured against a non-empty database."""
    conn.set("app:canary", "1")
    return int(conn.dbsize())


def assert_names(exc: InvalidEmailError, fields: tuple[str, ...]) -> None:
    assert set(fields) & set(exc.fields), (fields, exc.problems)
    assert any(f in str(exc) for f in fields)


@pytest.mark.parametrize("name", list(INVALID))
def test_hostile_send_email_is_refused_naming_the_field_and_writes_nothing(
    name: str, conn: redis.Redis, settings: Settings, canary: int
) -> None:
    hostile = INVALID[name]
    with pytest.raises(InvalidEmailError) as info:
        send_email(connection=conn, settings=settings, **hostile.fields())
    assert_names(info.value, hostile.field)
    assert conn.dbsize() == canary


@pytest.mark.parametrize(
    ("key", "field"),
    [
        pytest.param("k" * 201, "idempotency_key", id="201 chars"),
        pytest.param("", "idempotency_key", id="empty"),
        pytest.param(42, "idempotency_key", id="int"),
        pytest.param(b"receipt-1", "idempotency_key", id="bytes"),
    ],
)
def test_bad_idempotency_key_is_refused_and_writes_nothing(
    key: Any, field: str, conn: redis.Redis, settings: Settings, canary: int
) -> None:
    with pytest.raises(InvalidEmailError) as info:
        send_email(connection=conn, settings=settings, idempotency_key=key, **GOOD)
    assert_names(info.value, (field,))
    assert conn.dbsize() == canary


OK_PEOPLE = ["a@example.com", "b@example.com"]
EVENT_INVALID: dict[str, tuple[tuple[Any, ...], dict[str, Any], str]] = {
    "empty event_id": (("", OK_PEOPLE, "Hi"), {"text": "t"}, "event_id"),
    "blank event_id": (("   ", OK_PEOPLE, "Hi"), {"text": "t"}, "event_id"),
    "event_id of 201 chars": (("e" * 201, OK_PEOPLE, "Hi"), {"text": "t"}, "event_id"),
    "int event_id": ((2026, OK_PEOPLE, "Hi"), {"text": "t"}, "event_id"),
    "None event_id": ((None, OK_PEOPLE, "Hi"), {"text": "t"}, "event_id"),
    "recipients as one string": (("e", "a@example.com", "Hi"), {"text": "t"}, "recipients"),
    "recipients as a set": (("e", {"a@example.com"}, "Hi"), {"text": "t"}, "recipients"),
    "recipients as a dict": (("e", {"a@example.com": 1}, "Hi"), {"text": "t"}, "recipients"),
    "recipients empty": (("e", [], "Hi"), {"text": "t"}, "recipients"),
    "recipients None": (("e", None, "Hi"), {"text": "t"}, "recipients"),
    "an int recipient": (("e", ["a@example.com", 7], "Hi"), {"text": "t"}, "recipients[1]"),
    "a None recipient": (("e", [None], "Hi"), {"text": "t"}, "recipients[0]"),
    "a bytes recipient": (("e", [b"a@example.com"], "Hi"), {"text": "t"}, "recipients[0]"),
    "CRLF in a recipient": (("e", ["a@example.com" + INJECTION], "Hi"), {"text": "t"}, "recipients[0]"),
    "lone surrogate in a recipient": (
        ("e", ["a@example.com", f"b{LONE}@x.org"], "Hi"),
        {"text": "t"},
        "recipients[1]",
    ),
    "one bad among 60": (
        ("e", [f"u{i}@example.com" if i != 37 else "nope@" for i in range(60)], "Hi"),
        {"text": "t"},
        "recipients[37]",
    ),
    "CRLF in subject": (("e", OK_PEOPLE, "Hi" + INJECTION), {"text": "t"}, "subject"),
    "int subject": (("e", OK_PEOPLE, 5), {"text": "t"}, "subject"),
    "no body": (("e", OK_PEOPLE, "Hi"), {}, "html/text"),
    "unknown field": (("e", OK_PEOPLE, "Hi"), {"text": "t", "bodyy": "x"}, "bodyy"),
    "idempotency_key (not a fan-out option)": (
        ("e", OK_PEOPLE, "Hi"),
        {"text": "t", "idempotency_key": "k"},
        "idempotency_key",
    ),
    "attachment path file://": (
        ("e", OK_PEOPLE, "Hi"),
        {"text": "t", "attachments": [{"filename": "p", "path": "file:///etc/passwd"}]},
        "attachments[0].path",
    ),
    "tag name of 257 chars": (
        ("e", OK_PEOPLE, "Hi"),
        {"text": "t", "tags": [{"name": "n" * 257, "value": "v"}]},
        "tags[0].name",
    ),
    "51 bcc on every email": (
        ("e", OK_PEOPLE, "Hi"),
        {"text": "t", "bcc": [f"u{i}@example.com" for i in range(51)]},
        "bcc",
    ),
}


@pytest.mark.parametrize("name", list(EVENT_INVALID))
def test_hostile_send_event_email_is_refused_naming_the_field_and_queues_nobody(
    name: str, conn: redis.Redis, settings: Settings, canary: int
) -> None:
    args, kwargs, field = EVENT_INVALID[name]
    with pytest.raises(InvalidEmailError) as info:
        send_event_email(*args, connection=conn, settings=settings, **kwargs)
    assert_names(info.value, (field,))
    assert conn.dbsize() == canary


def test_message_and_keyword_fields_together_is_a_type_error(
    conn: redis.Redis, settings: Settings, canary: int
) -> None:
    """A malformed Python call (both an EmailMessage and keywords) is a TypeError, as Python's own
    argument errors are: the caller's code is wrong, not the email."""
    message = EmailMessage(to=["ada@example.com"], subject="s", text="t")
    with pytest.raises(TypeError, match="not both"):
        send_email(message, connection=conn, settings=settings, to="eve@example.com")
    assert conn.dbsize() == canary


# ---------------------------------------------------------------------------------------------
# Found by this suite as defects and fixed since; kept as regression tests.
# ---------------------------------------------------------------------------------------------

CONTROL: dict[str, tuple[str, dict[str, Any]]] = {
    "NUL in subject": ("subject", {"subject": "Hi\x00Bcc: victim@example.com"}),
    "VT in subject": ("subject", {"subject": "Hi\x0bBcc: victim@example.com"}),
    "ESC in subject": ("subject", {"subject": "Hi \x1b[2J"}),
    "NEL in subject": ("subject", {"subject": "Hi\x85Bcc: victim@example.com"}),
    "U+2028 in subject": ("subject", {"subject": "Hi\u2028Bcc: victim@example.com"}),
    "NUL in a header value": ("headers", {"headers": {"X-Ref": "1\x00Bcc: v@example.com"}}),
    "U+2029 in a header value": ("headers", {"headers": {"X-Ref": "1\u2029Bcc: v@example.com"}}),
    "NUL in to's display name": ("to[0]", {"to": "Ada\x00 <ada@example.com>"}),
    "U+2028 in from's display name": ("from", {"from_": "Ada\u2028Bcc: v@example.com <ada@example.com>"}),
    "FF in attachment filename": ("attachments[0].filename", attachment(filename="a\x0c.pdf")),
}


@pytest.mark.parametrize("name", list(CONTROL))
def test_control_characters_and_unicode_line_breaks_in_header_fields_are_refused(
    name: str, conn: redis.Redis, settings: Settings, canary: int
) -> None:
    field, changes = CONTROL[name]
    with pytest.raises(InvalidEmailError) as info:
        send_email(connection=conn, settings=settings, **{**GOOD, **changes})
    assert_names(info.value, (field,))
    assert conn.dbsize() == canary


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(
            big(("message", "headers"), lambda: {"headers": {"X-Big": "a" * (40 * MB + 1)}}), id="one"
        ),
        pytest.param(
            big(("message", "headers"), lambda: {"headers": {f"X-{i}": "a" * (5 * MB) for i in range(9)}}),
            id="nine-of-5-MB",
        ),
    ],
)
def test_over_40_mb_of_custom_headers_is_refused(
    hostile: Case, conn: redis.Redis, settings: Settings, canary: int
) -> None:
    with pytest.raises(InvalidEmailError) as info:
        send_email(connection=conn, settings=settings, **hostile.fields())
    assert_names(info.value, hostile.field)
    assert conn.dbsize() == canary


@pytest.mark.parametrize("which", ["idempotency_key", "event_id"])
def test_a_lone_surrogate_in_an_idempotency_key_or_event_id_is_an_invalid_email(
    which: str, conn: redis.Redis, settings: Settings, canary: int
) -> None:
    with pytest.raises(InvalidEmailError) as info:
        if which == "idempotency_key":
            send_email(connection=conn, settings=settings, idempotency_key=f"order-{LONE}", **GOOD)
        else:
            send_event_email(f"gala-{LONE}", OK_PEOPLE, "Hi", text="t", connection=conn, settings=settings)
    assert_names(info.value, (which,))
    assert conn.dbsize() == canary


@pytest.mark.parametrize("message", ["ada@example.com", 42, ["ada@example.com"]], ids=["str", "int", "list"])
def test_a_positional_message_that_is_not_an_email_message_is_a_type_error(
    message: Any, conn: redis.Redis, settings: Settings, canary: int
) -> None:
    """``send_email("ada@example.com")`` is a malformed Python call (the positional argument is an
    ``EmailMessage``): a TypeError that says so, like Python's own argument errors."""
    with pytest.raises(TypeError, match="EmailMessage"):
        send_email(message, connection=conn, settings=settings)
    assert conn.dbsize() == canary


def test_a_non_string_recipient_gets_a_plain_message(
    conn: redis.Redis, settings: Settings, canary: int
) -> None:
    with pytest.raises(InvalidEmailError) as info:
        send_event_email("e", ["a@example.com", 7], "Hi", text="t", connection=conn, settings=settings)  # type: ignore[list-item]
    (problem,) = info.value.problems
    assert problem.field == "recipients[1]"
    assert "attribute" not in problem.message and "string" in problem.message
    assert conn.dbsize() == canary


MAX_EVENT_RECIPIENTS = 10_000  # proposed cap; see the reply to issue 5


def test_more_than_10000_event_recipients_are_refused_before_anything_is_written(
    conn: redis.Redis, settings: Settings, canary: int
) -> None:
    people = [f"guest{i}@example.com" for i in range(MAX_EVENT_RECIPIENTS + 1)]
    with pytest.raises(InvalidEmailError) as info:
        send_event_email("gala", people, "Hi", html="<p>x</p>", connection=conn, settings=settings)
    assert info.value.fields == ["recipients"]
    assert str(MAX_EVENT_RECIPIENTS) in str(info.value)
    assert conn.dbsize() == canary


@pytest.mark.parametrize("conn", ["fake"], indirect=True)
def test_a_long_whitespace_padded_address_is_refused_at_once(
    conn: redis.Redis, settings: Settings, canary: int
) -> None:
    """A sign-up form passes the user's "email" to send_email: 1,200 spaces must not hold a worker.

    (RFC 5321 caps an address at 254 characters; RFC 5322 a header line at 998.)
    """
    with pytest.raises(InvalidEmailError) as info:
        send_email(connection=conn, settings=settings, **{**GOOD, "to": " " * 1200 + "x"})
    assert info.value.fields == ["to[0]"]
    # Refused by the length check, before any pattern runs over the 1,200 spaces.
    assert "longer than" in str(info.value), str(info.value)
    assert conn.dbsize() == canary


UPSTASH_MAX_REQUEST = 10 * MB  # docs/PLATFORM.md "Upstash Redis": 10 MB per request


def test_no_enqueue_command_exceeds_upstash_request_limit(
    conn: redis.Redis, settings: Settings, canary: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid fan-out must be writable to Upstash: no single command over its 10 MB limit."""
    # ~78 KB of text-like html that repeats nothing within zlib's 32 KB window, like a real newsletter.
    rng = random.Random(42)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5000)]
    html = "<p>" + " ".join(rng.choices(words, k=12_000)) + "</p>"
    sizes: list[int] = []
    execute: Callable[..., Any] = conn.execute_command

    def measured(*args: Any, **options: Any) -> Any:
        sizes.append(sum(len(a) if isinstance(a, bytes | str) else len(str(a)) for a in args))
        return execute(*args, **options)

    monkeypatch.setattr(conn, "execute_command", measured)
    people = [f"reader{i}@example.com" for i in range(400)]
    send_event_email("newsletter-42", people, "News", html=html, connection=conn, settings=settings)
    assert conn.llen("rq:queue:emails") >= 4  # it was written
    assert max(sizes) <= UPSTASH_MAX_REQUEST, f"largest command: {max(sizes) / MB:.1f} MB"
