"""The suppression mirror: fed by webhooks and by a sync of Resend's list, checked inside the
enqueue's own round trip, and removable from Resend and the mirror together.

Fact (docs/PLATFORM.md, "Resend: suppressions and webhooks"): Resend keeps one suppression list
per team (hard bounces, complaints, manual entries), lists it page by page through
``GET /suppressions`` and removes an entry through ``DELETE /suppressions/{id or email}``; a
send to a listed address is skipped (``email.suppressed``), never delivered.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from emailqueue import ResendClient, Settings, SuppressedAddressError, drain, send_email, send_event_email
from emailqueue._constants import SUPPRESSED_KEY
from emailqueue._events import lookup
from emailqueue._suppress import (
    add_suppression,
    is_suppressed,
    list_suppressions,
    remove_suppression,
    sync_suppressions,
)
from emailqueue.testing import FakeResend, signed_webhook
from tests.helpers.api_client import ADMIN_TOKEN, MakeClient, bearer
from tests.helpers.redis_stats import CommandCounter, counting_redis

HOOK = "/api/webhooks/resend"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def _jobs(conn: redis.Redis) -> list[bytes]:
    return sorted(k for k in conn.keys("rq:job:*"))


def test_send_email_to_a_suppressed_address_is_refused_naming_the_origin(
    conn: redis.Redis, settings: Settings
) -> None:
    add_suppression(conn, "ada@example.com", "bounce", "2026-11-01T00:00:00Z")
    add_suppression(conn, "bob@example.com", "complaint", "2026-11-02T00:00:00Z")
    with pytest.raises(SuppressedAddressError) as caught:
        send_email(to="ADA@Example.com", subject="hi", text="x", connection=conn, settings=settings)
    assert caught.value.origins == {"A***@Example.com": "bounce"}
    assert "origin: bounce" in str(caught.value) and "allow_suppressed=True" in str(caught.value)
    assert caught.value.fields == ["to"]
    with pytest.raises(SuppressedAddressError) as caught:
        send_email(
            to="carol@example.com",
            bcc=["bob@example.com"],
            subject="hi",
            text="x",
            connection=conn,
            settings=settings,
        )
    assert caught.value.origins == {"b***@example.com": "complaint"}
    assert _jobs(conn) == [] and conn.llen("rq:queue:emails") == 0
    # Overridden per call: queued.
    job_id = send_email(
        to="ada@example.com",
        subject="hi",
        text="x",
        connection=conn,
        settings=settings,
        allow_suppressed=True,
    )
    assert conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]
    # Another address goes through.
    send_email(to="carol@example.com", subject="hi", text="x", connection=conn, settings=settings)
    assert conn.llen("rq:queue:emails") == 2


def test_a_guarded_and_an_immediate_send_are_refused_too(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    add_suppression(conn, "ada@example.com", "manual", "2026-11-01T00:00:00Z")
    for extra in ({"idempotency_key": "order-1"}, {"now": True}, {"now": True, "idempotency_key": "o-2"}):
        with pytest.raises(SuppressedAddressError, match="origin: manual"):
            send_email(
                to="ada@example.com", subject="hi", text="x", connection=conn, settings=settings, **extra
            )
    assert _jobs(conn) == [] and fake_resend.accepted == []
    assert conn.keys("emailqueue:dedup:*") == []


def test_send_now_to_a_suppressed_address_is_refused_before_anything_is_written_or_sent(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """The immediate path checks the mirror inside its write-and-claim step: refused, naming the
    origin, with no job, no claim and no send slot taken (the limiter is untouched)."""
    limited = settings.model_copy(update={"resend_rate_limit": 2})
    add_suppression(conn, "ada@example.com", "complaint", "2026-11-01T00:00:00Z")
    with pytest.raises(SuppressedAddressError) as caught:
        send_email(to="ada@example.com", subject="hi", text="x", connection=conn, settings=limited, now=True)
    assert caught.value.origins == {"a***@example.com": "complaint"}
    assert _jobs(conn) == [] and conn.zcard("rq:wip:emails") == 0 and conn.llen("rq:queue:emails") == 0
    assert conn.keys("emailqueue:ratelimit*") == [] and fake_resend.requests == []


def test_a_fan_out_skips_suppressed_recipients_and_counts_them(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    for address, origin in (("b@example.com", "bounce"), ("d@example.com", "complaint")):
        add_suppression(conn, address, origin, "2026-11-01T00:00:00Z")
    everyone = [f"{c}@example.com" for c in "abcde"]
    queued = send_event_email("launch", everyone, "hi", text="x", connection=conn, settings=settings)
    assert queued.suppressed == 2
    drain(connection=conn, settings=settings, time_budget=60)
    assert sorted(e.to[0] for e in fake_resend.accepted) == [
        "a@example.com",
        "c@example.com",
        "e@example.com",
    ]
    # Overridden per call: the two are queued now (the others are deduplicated for the event).
    again = send_event_email(
        "launch", everyone, "hi", text="x", connection=conn, settings=settings, allow_suppressed=True
    )
    assert again.suppressed == 0 and len(again) == 1
    drain(connection=conn, settings=settings, time_budget=60)
    assert len(fake_resend.accepted) == 5


@pytest.mark.real_redis
def test_the_check_costs_no_round_trip_and_one_command(
    real_conn: redis.Redis, redis_url: str, settings: Settings
) -> None:
    """Inside ENQUEUE: one HMGET per call, whatever the number of recipients."""
    add_suppression(real_conn, "z@example.com", "bounce", "2026-11-01T00:00:00Z")
    conn, trips = counting_redis(redis_url, protocol=2, driver_info=None)
    send_email(to="w@example.com", subject="hi", text="x", connection=conn, settings=settings)
    trips.reset()
    with CommandCounter(real_conn) as counted:
        send_email(to="a@example.com", subject="hi", text="x", connection=conn, settings=settings)
    assert trips.round_trips == 1
    assert counted.by_command.get("hmget") == 1, counted.by_command
    recipients = [f"r{i}@example.com" for i in range(250)]
    send_event_email(
        "warm", ["q@example.com", "p@example.com"], "hi", text="x", connection=conn, settings=settings
    )
    trips.reset()
    with CommandCounter(real_conn) as counted:
        send_event_email("big", recipients, "hi", text="x", connection=conn, settings=settings)
    assert trips.round_trips == 1
    assert counted.by_command.get("hmget") == 1, counted.by_command


def _post(client: Any, event: dict[str, Any]) -> dict[str, Any]:
    body, headers = signed_webhook(SECRET, event)
    reply = client.post(HOOK, content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _email_event(kind: str, to: str, email_id: str, **data: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "created_at": "2026-11-30T10:00:00Z",
        "data": {"email_id": email_id, "to": [to], **data},
    }


def test_webhooks_feed_the_mirror(conn: redis.Redis, make_client: MakeClient) -> None:
    client = make_client(conn, resend_webhook_secret=SecretStr(SECRET))
    _post(client, _email_event("email.bounced", "hard@example.com", "e1", bounce={"type": "Permanent"}))
    _post(client, _email_event("email.bounced", "soft@example.com", "e2", bounce={"type": "Transient"}))
    _post(client, _email_event("email.complained", "spam@example.com", "e3"))
    added = {"id": "s-1", "email": "manual@example.com", "origin": "manual", "created_at": "2026-11-30"}
    assert _post(client, {"type": "suppression.added", "created_at": "2026-11-30", "data": added})[
        "state"
    ] == ("suppressed")
    origins = {s.address: s.origin for s in list_suppressions(conn)}
    assert origins == {
        "h***@example.com": "bounce",
        "s***@example.com": "complaint",
        "m***@example.com": "manual",
    }
    assert is_suppressed(conn, "soft@example.com") is None
    gone = {"type": "suppression.removed", "created_at": "2026-11-30", "data": {"email": "hard@example.com"}}
    _post(client, gone)
    assert is_suppressed(conn, "hard@example.com") is None
    # No full address in the mirror.
    assert all(b"@example.com" not in v or b"***" in v for v in conn.hvals(SUPPRESSED_KEY))


def test_sync_replaces_the_mirror_with_resends_list_every_page(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    add_suppression(conn, "stale@example.com", "bounce", "2026-01-01")  # no longer on Resend's list
    for i in range(150):
        fake_resend.suppressions.add(f"s{i}@example.com", ("bounce", "complaint", "manual")[i % 3])
    assert sync_suppressions(conn, settings) == 150
    assert is_suppressed(conn, "stale@example.com") is None
    hit = is_suppressed(conn, "S147@example.com")  # 147 % 3 == 0: bounce
    assert hit is not None and hit.origin == "bounce"
    gets = [r for r in fake_resend.requests if r.method == "GET" and r.path == "/suppressions"]
    assert len(gets) == 2  # 100 + 50
    fake_resend.suppressions.clear()
    assert sync_suppressions(conn, settings) == 0
    assert conn.exists(SUPPRESSED_KEY) == 0


def test_remove_takes_it_off_resends_list_then_the_mirror(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.suppressions.add("ada@example.com", "bounce")
    sync_suppressions(conn, settings)
    assert remove_suppression(conn, settings, "Ada <ada@example.com>") is True
    assert "ada@example.com" not in fake_resend.suppressions
    assert is_suppressed(conn, "ada@example.com") is None
    send_email(to="ada@example.com", subject="hi", text="x", connection=conn, settings=settings)


def test_a_failed_removal_at_resend_leaves_the_mirror_as_it_was(
    conn: redis.Redis, settings: Settings
) -> None:
    add_suppression(conn, "ada@example.com", "bounce", "2026-01-01")

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            500, json={"statusCode": 500, "name": "internal_server_error", "message": "down"}
        )

    client = ResendClient(httpx.Client(transport=httpx.MockTransport(refuse)), api_key="re_x")
    with pytest.raises(Exception, match="down"):
        remove_suppression(conn, settings, "ada@example.com", client=client)
    assert is_suppressed(conn, "ada@example.com") is not None


def test_an_email_resend_skips_as_suppressed_is_recorded_as_such_never_delivered(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, make_client: MakeClient
) -> None:
    fake_resend.suppressions.add("ada@example.com", "complaint")
    send_email(to="ada@example.com", subject="hi", text="x", connection=conn, settings=settings)
    drain(connection=conn, settings=settings, time_budget=60)
    client = make_client(conn, resend_webhook_secret=SecretStr(SECRET))
    replies = fake_resend.emit_webhooks(HOOK, SECRET, client=client)
    assert [r.json()["type"] for r in replies] == ["email.sent", "email.suppressed"]
    (life,) = lookup(conn, "ada@example.com", ttl=settings.email_events_ttl_s)
    assert life.state == "suppressed"
    assert "delivered" not in [s.state for s in life.steps]


def test_admin_routes_list_sync_and_remove(
    conn: redis.Redis, fake_resend: FakeResend, make_client: MakeClient
) -> None:
    client = make_client(conn)
    auth = bearer(ADMIN_TOKEN)
    fake_resend.suppressions.add("ada@example.com", "bounce")
    assert client.post("/api/admin/suppressions/sync", headers=auth).json() == {"suppressed": 1}
    listed = client.get("/api/admin/suppressions", headers=auth)
    assert [s["address"] for s in listed.json()["suppressions"]] == ["a***@example.com"]
    assert "ada@example.com" not in listed.text
    reply = client.post("/api/admin/suppressions/remove", json={"address": "ada@example.com"}, headers=auth)
    assert reply.json() == {"removed": True}
    assert client.get("/api/admin/suppressions", headers=auth).json() == {"suppressions": []}
    assert client.get("/api/admin/suppressions").status_code == 401
    assert (
        client.post("/api/admin/suppressions/remove", json={"address": "nope"}, headers=auth).status_code
        == 422
    )
