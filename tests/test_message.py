"""Validation at enqueue: every bad message raises InvalidEmailError naming the field, and
nothing is written to Redis (docs/PLATFORM.md "Resend": POST /emails limits)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from emailqueue import EmailMessage, InvalidEmailError, Settings, send_email, send_event_email
from emailqueue._redact import mask_email

GOOD: dict[str, Any] = {"to": "ada@example.com", "subject": "Hello", "html": "<p>Hi</p>"}


def bad(**changes: Any) -> dict[str, Any]:
    fields = {**GOOD, **changes}
    return {k: v for k, v in fields.items() if v is not _DROP}


_DROP = object()

INVALID = [
    ("invalid address", bad(to="not-an-address"), "to[0]"),
    ("second address invalid", bad(to=["ok@example.com", "nope@"]), "to[1]"),
    ("no recipients", bad(to=[]), "to"),
    ("51 recipients", bad(to=[f"u{i}@example.com" for i in range(51)]), "to"),
    ("empty subject", bad(subject="   "), "subject"),
    ("no body", bad(html=_DROP), "html/text"),
    ("tag charset", bad(tags=[{"name": "utm source", "value": "x"}]), "tags[0].name"),
    ("tag value charset", bad(tags=[{"name": "a", "value": "é"}]), "tags[0].value"),
    (
        "attachment not base64",
        bad(attachments=[{"filename": "a.pdf", "content": "%%%"}]),
        "attachments[0].content",
    ),
    ("attachment no source", bad(attachments=[{"filename": "a.pdf"}]), "attachments[0]"),
    ("CRLF in subject", bad(subject="Hi\r\nBcc: victim@example.com"), "subject"),
    ("CRLF in address", bad(to="a@example.com\r\nBcc: v@example.com"), "to[0]"),
    ("CRLF in header value", bad(headers={"X-Ref": "1\r\nBcc: v@example.com"}), "headers"),
    ("bad header name", bad(headers={"X Ref": "1"}), "headers"),
    ("unknown field", bad(bodyy="<p>x</p>"), "bodyy"),
    ("wrong type", bad(subject=42), "subject"),
    ("non-UTF-8 text", bad(text="\udcff"), "text"),
    (
        "over 40 MB",
        bad(attachments=[{"filename": "big", "content": "A" * (40 * 1024 * 1024 + 4)}]),
        "message",
    ),
    ("naive send_at", bad(send_at=datetime(2030, 1, 1)), "send_at"),
    ("send_at > 30 days", bad(send_at=datetime.now(UTC) + timedelta(days=31)), "send_at"),
    ("invalid cc", bad(cc=["x"]), "cc[0]"),
    ("too many tags", bad(tags=[{"name": f"t{i}", "value": "v"} for i in range(51)]), "tags"),
]


@pytest.mark.parametrize(("case", "fields", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_message_names_the_field_and_writes_nothing(
    case: str, fields: dict[str, Any], field: str, conn: redis.Redis, settings: Settings
) -> None:
    before = conn.dbsize()
    with pytest.raises(InvalidEmailError) as info:
        send_email(connection=conn, settings=settings, **fields)
    assert field in info.value.fields, (case, info.value.problems)
    assert field in str(info.value)
    assert conn.dbsize() == before


def test_every_problem_is_listed_at_once(settings: Settings, conn: redis.Redis) -> None:
    with pytest.raises(InvalidEmailError) as info:
        send_email(
            connection=conn, settings=settings, to="x", subject="", tags=[{"name": "a b", "value": "v"}]
        )
    assert {"to[0]", "subject", "tags[0].name", "html/text"} <= set(info.value.fields)


def test_missing_sender_is_reported_when_no_default(settings: Settings, conn: redis.Redis) -> None:
    no_from = settings.model_copy(update={"email_from": None})
    with pytest.raises(InvalidEmailError) as info:
        send_email(connection=conn, settings=no_from, **GOOD)
    assert info.value.fields == ["from"]
    assert "EMAIL_FROM" in str(info.value)


def test_fan_out_with_one_bad_recipient_queues_nobody(settings: Settings, conn: redis.Redis) -> None:
    with pytest.raises(InvalidEmailError) as info:
        send_event_email(
            "launch",
            ["a@example.com", "broken", "c@example.com"],
            "Hi",
            text="x",
            connection=conn,
            settings=settings,
        )
    assert info.value.fields == ["recipients[1]"]
    assert conn.dbsize() == 0


def test_valid_message_maps_to_resend_fields() -> None:
    content = base64.b64encode(b"%PDF").decode()
    message = EmailMessage.model_validate(
        {
            "from": "Shop <shop@example.com>",
            "to": "Ada <ada@example.com>",
            "subject": "Receipt",
            "text": "thanks",
            "reply_to": "help@example.com",
            "tags": [{"name": "kind", "value": "receipt"}],
            "attachments": [{"filename": "r.pdf", "content": content}],
            "send_at": datetime(2030, 1, 1, tzinfo=UTC) if False else None,
        }
    )
    body = message.to_resend()
    assert body == {
        "from": "Shop <shop@example.com>",
        "to": ["Ada <ada@example.com>"],
        "subject": "Receipt",
        "text": "thanks",
        "reply_to": ["help@example.com"],
        "tags": [{"name": "kind", "value": "receipt"}],
        "attachments": [{"filename": "r.pdf", "content": content}],
    }


def test_send_at_becomes_scheduled_at() -> None:
    when = datetime.now(UTC) + timedelta(days=2)
    body = EmailMessage(to=["a@example.com"], subject="s", text="t", send_at=when).to_resend("x@example.com")
    assert body["scheduled_at"] == when.isoformat()
    assert body["from"] == "x@example.com"


@pytest.mark.parametrize(
    ("address", "masked"),
    [("john@example.com", "j***@example.com"), ("John <john@example.com>", "j***@example.com"), ("x", "***")],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked
