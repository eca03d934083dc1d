"""Resend's webhooks: ``POST /api/webhooks/resend`` checks the Svix signature, records each event
on its email's lifecycle once, and refuses anything unsigned without changing a key.

Fact (docs/PLATFORM.md, "Resend: webhooks"): Resend signs webhooks the Svix way (``svix-id``,
``svix-timestamp``, ``svix-signature`` with space-separated ``v1,<base64>`` entries over
``id.timestamp.body``), retries a failed delivery with the same ``svix-id`` for about a day, and
signs with both secrets during a rotation.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from standardwebhooks import Webhook

from emailqueue import Settings, drain, send_email, send_event_email
from emailqueue._events import lookup as _lookup
from emailqueue.testing import FakeResend, signed_webhook
from tests.helpers.api_client import ADMIN_TOKEN, MakeClient, bearer
from tests.helpers.redis_stats import CommandCounter

HOOK = "/api/webhooks/resend"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()


def _event(kind: str = "email.delivered", email_id: str = "e-1", **data: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "created_at": "2026-11-30T10:00:00.000Z",
        "data": {"email_id": email_id, "to": ["someone@example.com"], **data},
    }


def lookup(conn: redis.Redis, query: str) -> list[Any]:
    return _lookup(conn, query, ttl=30 * 86400)


def _keys(conn: redis.Redis) -> dict[bytes, Any]:
    """Every key with its value: proof that a refused webhook changed nothing."""
    out: dict[bytes, Any] = {}
    for key in sorted(conn.keys("*")):
        kind = conn.type(key)
        out[key] = conn.hgetall(key) if kind == b"hash" else conn.dump(key)
    return out


def _sent_and_delivered(conn: redis.Redis, settings: Settings, fake: FakeResend) -> list[str]:
    ids = [
        send_email(to=f"user{i}@example.com", subject="hi", text="x", connection=conn, settings=settings)
        for i in range(3)
    ]
    report = drain(connection=conn, settings=settings, time_budget=60)
    assert report.sent == 3
    return ids


def test_lifecycle_from_send_to_bounce_by_job_id_resend_id_and_address(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, make_client: MakeClient
) -> None:
    job_ids = _sent_and_delivered(conn, settings, fake_resend)
    client = make_client(conn, resend_webhook_secret=SecretStr(SECRET))
    replies = fake_resend.emit_webhooks(
        HOOK, SECRET, bounce=["user1@example.com"], complain=["user2@example.com"], client=client
    )
    assert [r.status_code for r in replies] == [200] * len(replies)
    assert all(r.json()["recorded"] for r in replies)

    by_job = {life.job_id: life for job_id in job_ids for life in lookup(conn, job_id)}
    assert [by_job[j].state for j in job_ids] == ["delivered", "bounced", "complained"]
    bounced = by_job[job_ids[1]]
    assert [s.state for s in bounced.steps] == ["sent", "bounced"]
    assert bounced.steps[1].detail == "Permanent/General"
    assert bounced.to == "u***@example.com"
    resend_id = {e.to[0]: e.id for e in fake_resend.accepted}["user1@example.com"]
    assert bounced.resend_id == resend_id
    assert [life.job_id for life in lookup(conn, resend_id)] == [job_ids[1]]
    assert [life.job_id for life in lookup(conn, "USER1@example.com")] == [job_ids[1]]

    # The admin route shows the same, masked.
    reply = client.get("/api/admin/emails", params={"q": "user1@example.com"}, headers=bearer(ADMIN_TOKEN))
    assert reply.status_code == 200
    (email,) = reply.json()["emails"]
    assert email["state"] == "bounced" and email["job_id"] == job_ids[1]
    assert [step["state"] for step in email["timeline"]] == ["sent", "bounced"]
    assert "user1@example.com" not in reply.text
    assert client.get("/api/admin/emails", params={"q": "x"}).status_code == 401


def test_a_batch_records_each_recipients_resend_id_under_its_own_job(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    send_event_email(
        "welcome", ["a@example.com", "b@example.com"], "hi", text="x", connection=conn, settings=settings
    )
    drain(connection=conn, settings=settings, time_budget=60)
    accepted = {e.to[0]: e.id for e in fake_resend.accepted}
    for address in ("a@example.com", "b@example.com"):
        (life,) = lookup(conn, address)
        assert life.resend_id == accepted[address] and life.state == "sent"
        assert life.job_id is not None and life.job_id.startswith("ev_")
        assert [x.resend_id for x in lookup(conn, life.job_id)] == [accepted[address]]


def test_a_retried_webhook_changes_nothing(conn: redis.Redis, make_client: MakeClient) -> None:
    """Idempotent on svix-id: Resend's retry of a delivered webhook is recorded (and counted) once."""
    client = make_client(conn, resend_webhook_secret=SecretStr(SECRET))
    body, headers = signed_webhook(SECRET, _event(), msg_id="msg_retry")
    first = client.post(HOOK, content=body, headers=headers)
    assert first.json() == {"type": "email.delivered", "state": "delivered", "recorded": True}
    before = _keys(conn)
    again = client.post(HOOK, content=body, headers=headers)
    assert again.status_code == 200 and again.json()["recorded"] is False
    assert _keys(conn) == before
    counters = conn.hgetall("emailqueue:hourly")
    assert [(k.split(b":")[1], v) for k, v in counters.items()] == [(b"delivered", b"1")]


def test_an_event_type_not_tracked_is_answered_200_and_records_nothing(
    conn: redis.Redis, make_client: MakeClient
) -> None:
    client = make_client(conn, resend_webhook_secret=SecretStr(SECRET))
    body, headers = signed_webhook(SECRET, _event("email.opened"))
    reply = client.post(HOOK, content=body, headers=headers)
    assert reply.json() == {"type": "email.opened", "state": None, "recorded": False}
    assert conn.dbsize() == 0


def _tampered_body(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body.replace(b"e-1", b"e-2"), headers


def _wrong_secret(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return signed_webhook(OTHER, json.loads(body), msg_id=headers["svix-id"])


def _stale(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return signed_webhook(SECRET, json.loads(body), timestamp=time.time() - 600)


def _future(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return signed_webhook(SECRET, json.loads(body), timestamp=time.time() + 600)


def _drop(name: str) -> Any:
    def drop(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return body, {k: v for k, v in headers.items() if k != name}

    return drop


def _set(name: str, value: str) -> Any:
    def put(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return body, {**headers, name: value}

    return put


def _other_svix_id(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, {**headers, "svix-id": "msg_other"}  # the id is part of what is signed


def _v2_only(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, {**headers, "svix-signature": headers["svix-signature"].replace("v1,", "v2,")}


BAD = {
    "tampered body": _tampered_body,
    "wrong secret": _wrong_secret,
    "timestamp 10 min old": _stale,
    "timestamp 10 min ahead": _future,
    "no svix-id": _drop("svix-id"),
    "no svix-timestamp": _drop("svix-timestamp"),
    "no svix-signature": _drop("svix-signature"),
    "signature not base64": _set("svix-signature", "v1,!!!"),
    "signature without version": _set("svix-signature", "garbage"),
    "timestamp not a number": _set("svix-timestamp", "soon"),
    "signed under another svix-id": _other_svix_id,
    "only a v2 signature": _v2_only,
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_signature_is_refused_with_401_and_changes_nothing(
    case: str, conn: redis.Redis, make_client: MakeClient
) -> None:
    client = make_client(conn, resend_webhook_secret=SecretStr(SECRET))
    conn.set("unrelated", "1")
    before = _keys(conn)
    body, headers = BAD[case](*signed_webhook(SECRET, _event()))
    reply = client.post(HOOK, content=body, headers=headers)
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"] == "invalid_webhook"
    assert _keys(conn) == before


def test_a_signed_body_that_is_not_an_event_is_400(conn: redis.Redis, make_client: MakeClient) -> None:
    client = make_client(conn, resend_webhook_secret=SecretStr(SECRET))
    now = time.time()
    sig = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(now, UTC), "[1, 2]")
    headers = {"svix-id": "msg_1", "svix-timestamp": str(int(now)), "svix-signature": sig}
    reply = client.post(HOOK, content=b"[1, 2]", headers=headers)
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_webhook"
    assert conn.dbsize() == 0


def test_rotation_a_header_with_the_old_and_the_new_signature_is_accepted(
    conn: redis.Redis, make_client: MakeClient
) -> None:
    """During a rotation Resend lists one signature per secret; ours may be any of them."""
    client = make_client(conn, resend_webhook_secret=SecretStr(SECRET))
    body, ours = signed_webhook(SECRET, _event(), msg_id="msg_rot")
    _, old = signed_webhook(OTHER, _event(), msg_id="msg_rot", timestamp=float(ours["svix-timestamp"]))
    both = f"{old['svix-signature']} {ours['svix-signature']}"
    reply = client.post(HOOK, content=body, headers={**ours, "svix-signature": both})
    assert reply.status_code == 200 and reply.json()["recorded"] is True
    # Only the other secret's signature: refused.
    body, ours = signed_webhook(SECRET, _event(email_id="e-2"), msg_id="msg_rot2")
    _, old = signed_webhook(
        OTHER, _event(email_id="e-2"), msg_id="msg_rot2", timestamp=float(ours["svix-timestamp"])
    )
    assert (
        client.post(HOOK, content=body, headers={**ours, "svix-signature": old["svix-signature"]}).status_code
        == 401
    )


def test_our_own_rotation_two_secrets_in_the_setting(conn: redis.Redis, make_client: MakeClient) -> None:
    client = make_client(conn, resend_webhook_secret=SecretStr(f"{OTHER} {SECRET}"))
    body, headers = signed_webhook(SECRET, _event())
    assert client.post(HOOK, content=body, headers=headers).status_code == 200
    body, headers = signed_webhook(OTHER, _event(email_id="e-2"))
    assert client.post(HOOK, content=body, headers=headers).status_code == 200


@pytest.mark.parametrize("dev", [False, True])
def test_an_unset_secret_closes_the_route_with_503_even_in_dev_mode(
    dev: bool, conn: redis.Redis, make_client: MakeClient
) -> None:
    client = make_client(conn, resend_webhook_secret=None, emailqueue_dev=dev)
    body, headers = signed_webhook(SECRET, _event())
    reply = client.post(HOOK, content=body, headers=headers)
    assert reply.status_code == 503
    assert "RESEND_WEBHOOK_SECRET" in reply.json()["message"]
    assert conn.dbsize() == 0


def test_a_webhook_event_costs_at_most_five_redis_commands(
    real_conn: redis.Redis, make_client: MakeClient
) -> None:
    """Issue 14's budget: one EVALSHA and four commands inside it; a retry costs two."""
    client = make_client(real_conn, resend_webhook_secret=SecretStr(SECRET))
    warm, warm_headers = signed_webhook(SECRET, _event(email_id="warm"))
    client.post(HOOK, content=warm, headers=warm_headers)  # loads the script
    body, headers = signed_webhook(SECRET, _event("email.bounced", bounce={"type": "Permanent"}))
    with CommandCounter(real_conn) as first:
        assert client.post(HOOK, content=body, headers=headers).json()["recorded"] is True
    with CommandCounter(real_conn) as retry:
        assert client.post(HOOK, content=body, headers=headers).json()["recorded"] is False
    assert first.total <= 5, first.by_command
    assert retry.total <= 2, retry.by_command


def test_a_vm_worker_records_sent_with_resends_id_too(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from emailqueue import configure_worker
    from tests.helpers.rq_helpers import run_burst

    queue = Queue(settings.email_queue_name, connection=conn, serializer=JSONSerializer)
    configure_worker(settings)
    try:
        job_id = send_email(to="ada@example.com", subject="hi", text="x", queue=queue, settings=settings)
        ids = send_event_email(
            "launch", ["b@example.com", "c@example.com"], "hi", text="x", queue=queue, settings=settings
        )
        run_burst(queue)
    finally:
        configure_worker()
    accepted = {e.to[0]: e.id for e in fake_resend.accepted}
    (single,) = lookup(conn, job_id)
    assert (single.resend_id, single.state, single.to) == (
        accepted["ada@example.com"],
        "sent",
        "a***@example.com",
    )
    assert len(ids) == 1  # one batch chunk; each recipient is found under its own Resend id
    assert [life.resend_id for life in lookup(conn, "c@example.com")] == [accepted["c@example.com"]]
