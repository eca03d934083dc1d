"""The dashboard's access rules, through the ASGI app (the browser test drives the page itself):
closed (503) without QUEUE_ADMIN_TOKEN, open in dev mode, a sign-in cookie that is not the
token, and requeue forms that need the CSRF value."""

from __future__ import annotations

import re

import redis
from pydantic import SecretStr

from emailqueue import Settings, drain, send_email
from emailqueue.testing import FakeResend
from tests.helpers.api_client import ADMIN_TOKEN, MakeClient, bearer

DASH = "/api/admin/dashboard/"


def test_closed_without_a_token_and_open_in_dev_mode(conn: redis.Redis, make_client: MakeClient) -> None:
    closed = make_client(conn, queue_admin_token=None)
    reply = closed.get(DASH)
    assert reply.status_code == 503 and "QUEUE_ADMIN_TOKEN" in reply.json()["message"]
    assert closed.post(DASH + "login", content=b"token=x").status_code == 503
    dev = make_client(conn, queue_admin_token=None, emailqueue_dev=True)
    page = dev.get(DASH)
    assert page.status_code == 200 and 'id="count-queued"' in page.text


def test_sign_in_sets_a_cookie_that_is_not_the_token(conn: redis.Redis, make_client: MakeClient) -> None:
    client = make_client(conn)
    first = client.get(DASH, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "login"
    wrong = client.post(DASH + "login", content=b"token=nope", follow_redirects=False)
    assert wrong.status_code == 401 and "emailqueue_admin" not in wrong.headers.get("set-cookie", "")
    right = client.post(DASH + "login", content=f"token={ADMIN_TOKEN}".encode(), follow_redirects=False)
    cookie = right.headers["set-cookie"]
    assert right.status_code == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert ADMIN_TOKEN not in cookie
    assert client.get(DASH).status_code == 200
    assert make_client(conn).get(DASH, headers=bearer(ADMIN_TOKEN)).status_code == 200


def test_requeue_needs_the_csrf_value(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, make_client: MakeClient
) -> None:
    fake_resend.fail_next(1, 422, "validation_error", "rejected")
    job_id = send_email(to="ada@example.com", subject="hi", text="x", connection=conn, settings=settings)
    drain(connection=conn, settings=settings, time_budget=60)
    client = make_client(conn, resend_webhook_secret=SecretStr("whsec_MTIz"))
    page = client.get(DASH, headers=bearer(ADMIN_TOKEN)).text
    assert "ada@example.com" not in page and "a***@example.com" in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None
    forged = client.post(
        DASH + "requeue", content=f"csrf=bad&job_id={job_id}".encode(), headers=bearer(ADMIN_TOKEN)
    )
    assert forged.status_code == 403 and conn.llen("rq:queue:emails") == 0
    done = client.post(
        DASH + "requeue",
        content=f"csrf={csrf.group(1)}&job_id={job_id}".encode(),
        headers=bearer(ADMIN_TOKEN),
        follow_redirects=False,
    )
    assert done.status_code == 303 and "requeued" in done.headers["location"]
    assert conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]
