"""The pattern docs/SEND_NOW.md recommends on Vercel: queue in the route, deliver_now in a FastAPI
background task.

Fact (docs/SEND_NOW.md, "Does background work finish on Vercel?"): vercel-runtime 0.23.2 serves
an ASGI app through ``vc_init.ASGIMiddleware``, whose ``__call__`` awaits the app and only then,
in ``finish_request``, drains ``wait_until`` work and sends the IPC ``end`` message that closes
the invocation. Starlette runs a response's background tasks inside that same app call, after
the response body is sent. So the client has its reply before the email goes out, and the
invocation ends only after it did. These tests pin the Starlette half of that (the runtime's
half is read from its source; it cannot run on Python 3.11).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from fastapi import BackgroundTasks, FastAPI

from emailqueue import Settings, deliver_now, send_email
from emailqueue.testing import FakeResend


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"app.example")],
        "server": ("app.example", 443),
        "client": ("203.0.113.1", 5000),
    }


def test_a_background_deliver_now_runs_after_the_reply_and_before_the_app_call_returns(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    events: list[str] = []
    app = FastAPI()

    @app.post("/sign-in")
    def sign_in(background: BackgroundTasks) -> dict[str, str]:
        job_id = send_email(
            to="ada@example.com", subject="Your link", text="x", connection=conn, settings=settings
        )
        # Queued first (durable); the background task only makes it arrive sooner.
        background.add_task(
            lambda: events.append(
                f"deliver_now sent={deliver_now(job_id, connection=conn, settings=settings).sent}"
            )
        )
        return {"job_id": job_id}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            events.append(f"reply sent, {len(fake_resend.accepted)} email(s) accepted")
        else:
            events.append(message["type"])

    async def invocation() -> None:
        await app(_scope("/sign-in"), receive, send)
        # vercel-runtime's ASGIMiddleware sends the IPC "end" message here, not before.
        events.append(f"app call returned, {len(fake_resend.accepted)} email(s) accepted")

    asyncio.run(invocation())
    assert events == [
        "http.response.start",
        "reply sent, 0 email(s) accepted",
        "deliver_now sent=True",
        "app call returned, 1 email(s) accepted",
    ]
