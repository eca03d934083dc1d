"""The HTTP API through its ASGI app (and once through a real uvicorn process): auth, the cron
drain's bounds, monitoring, requeue, health, and JSON errors that never leak a secret."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
import redis

from emailqueue import Settings, drain, send_email
from emailqueue._connection import connect
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend
from emailqueue.web import create_app
from emailqueue.web._deps import get_connection, get_settings
from tests.helpers.api_client import (
    ADMIN_TOKEN,
    CRON,
    CRON_SECRET,
    REQUEUE,
    STATUS,
    MakeClient,
    TestClient,
    bearer,
    with_secrets,
)

ROOT = Path(__file__).resolve().parents[1]
HTML = "<p>secret-html-body</p>"
TEXT = "secret-text-body"

Client = MakeClient


@pytest.fixture
def fake_conn() -> redis.Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def enqueue(conn: redis.Redis, settings: Settings, n: int = 1, to: str = "ada@example.com") -> list[str]:
    return [
        send_email(to=to, subject=f"Hi {i}", html=HTML, text=TEXT, connection=conn, settings=settings)
        for i in range(n)
    ]


def dead_url(password: str = "sentinel-redis-pw") -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://:{password}@127.0.0.1:{port}/0"


# --- auth ---

ROUTES = [
    pytest.param("GET", CRON, CRON_SECRET, None, id="cron-get"),
    pytest.param("POST", CRON, CRON_SECRET, None, id="cron-post"),
    pytest.param("GET", STATUS, ADMIN_TOKEN, None, id="status"),
    pytest.param("POST", REQUEUE, ADMIN_TOKEN, {"all": True}, id="requeue"),
]


@pytest.mark.parametrize(("method", "path", "token", "body"), ROUTES)
def test_right_token_is_let_in(
    make_client: Client, fake_conn: redis.Redis, method: str, path: str, token: str, body: Any
) -> None:
    reply = make_client(fake_conn).request(method, path, headers=bearer(token), json=body)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(("method", "path", "token", "body"), ROUTES)
@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer nope", id="wrong"),
        pytest.param("LAST_CHAR", id="last-char-differs"),
        pytest.param("OTHER_ROUTES_TOKEN", id="other-routes-token"),
        pytest.param("TOKEN_ONLY", id="no-bearer-prefix"),
        pytest.param("", id="empty"),
    ],
)
def test_wrong_or_missing_token_is_401_json(
    make_client: Client,
    fake_conn: redis.Redis,
    settings: Settings,
    method: str,
    path: str,
    token: str,
    body: Any,
    header: str | None,
) -> None:
    if header == "LAST_CHAR":
        header = f"Bearer {token[:-1]}{chr(ord(token[-1]) + 1)}"
    elif header == "OTHER_ROUTES_TOKEN":
        header = f"Bearer {ADMIN_TOKEN if token == CRON_SECRET else CRON_SECRET}"
    elif header == "TOKEN_ONLY":
        header = token
    headers = {} if header is None else {"Authorization": header}
    enqueue(fake_conn, settings)
    reply = make_client(fake_conn).request(method, path, headers=headers, json=body)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["error"] == "unauthorized"
    assert token not in reply.text
    assert fake_conn.llen("rq:queue:emails") == 1  # nothing was run


@pytest.mark.parametrize(("method", "path", "token", "body"), ROUTES)
def test_unset_secret_closes_the_route_with_503_naming_the_variable(
    make_client: Client, fake_conn: redis.Redis, method: str, path: str, token: str, body: Any
) -> None:
    variable = "CRON_SECRET" if token == CRON_SECRET else "QUEUE_ADMIN_TOKEN"
    client = make_client(fake_conn, **{variable.lower(): None})
    for headers in ({}, bearer(token), bearer("")):
        reply = client.request(method, path, headers=headers, json=body)
        assert reply.status_code == 503
        assert reply.json()["error"] == "misconfigured"
        assert f"set {variable}" in reply.json()["message"]


@pytest.mark.parametrize(("method", "path", "token", "body"), ROUTES)
def test_dev_mode_opens_a_route_whose_secret_is_unset_but_never_in_production(
    make_client: Client, fake_conn: redis.Redis, method: str, path: str, token: str, body: Any
) -> None:
    unset = {"cron_secret": None, "queue_admin_token": None, "emailqueue_dev": True}
    dev = make_client(fake_conn, **unset)
    assert dev.request(method, path, json=body).status_code == 200
    production = make_client(fake_conn, **unset, vercel_env="production")
    assert production.request(method, path, json=body).status_code == 503
    # Dev mode does not open a route whose secret is set.
    guarded = make_client(fake_conn, emailqueue_dev=True)
    assert guarded.request(method, path, json=body).status_code == 401


# --- the cron drain ---


def test_one_cron_run_drains_at_most_drain_max_jobs_and_the_next_the_rest(
    make_client: Client, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    enqueue(conn, settings, n=5)
    client = make_client(conn, drain_max_jobs=3)
    first = client.get(CRON, headers=bearer(CRON_SECRET))
    assert first.status_code == 200
    body = first.json()
    assert set(body) >= {"processed", "sent", "failed", "retrying", "remaining", "duration_ms", "stopped"}
    assert set(body) >= {"promoted", "recovered"}
    assert (body["processed"], body["sent"], body["stopped"], body["remaining"]) == (3, 3, "max_jobs", 2)
    second = client.get(CRON, headers=bearer(CRON_SECRET)).json()
    assert (second["processed"], second["stopped"], second["remaining"]) == (2, "empty", 0)
    assert len(fake_resend.accepted) == 5


def test_a_cron_run_returns_within_its_time_budget(
    make_client: Client, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.latency = 0.2
    enqueue(conn, settings, n=40)  # more than DRAIN_CONCURRENCY sends can do in the budget
    client = make_client(conn, resend_timeout_s=0.5, resend_connect_timeout_s=0.1, drain_time_budget_s=1.0)
    reply = client.get(CRON, headers=bearer(CRON_SECRET))
    body = reply.json()
    assert reply.status_code == 200
    assert body["stopped"] == "time_budget"  # the budget, not the queue, ended the run
    assert 1 <= body["processed"] < 40
    assert body["remaining"] == 40 - body["processed"] == conn.llen("rq:queue:emails")
    assert len(fake_resend.accepted) == body["sent"] == body["processed"]


def test_unreachable_redis_is_503_json_and_nothing_is_lost(
    make_client: Client, real_conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    enqueue(real_conn, settings)
    url = dead_url()
    client = make_client(connect(url, retries=0), queue_redis_url=url)
    for method, path, token in [("GET", CRON, CRON_SECRET), ("GET", STATUS, ADMIN_TOKEN)]:
        reply = client.request(method, path, headers=bearer(token))
        assert reply.status_code == 503
        assert reply.json()["error"] == "queue_unavailable"
        assert "sentinel-redis-pw" not in reply.text
    requeue = client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"all": True})
    assert requeue.status_code == 503
    health = client.get("/api/health")
    assert health.status_code == 503
    assert health.json() == {
        "ok": False,
        "redis": {"ok": False, "latency_ms": None, "error": "Redis is unavailable (ConnectionError)"},
    }
    assert real_conn.llen("rq:queue:emails") == 1 and fake_resend.accepted == []


def test_missing_resend_key_is_503_misconfigured_and_takes_nothing(
    make_client: Client, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    enqueue(conn, settings)
    reply = make_client(conn, resend_api_key=None).get(CRON, headers=bearer(CRON_SECRET))
    assert reply.status_code == 503
    assert reply.json()["error"] == "misconfigured"
    assert "RESEND_API_KEY" in reply.json()["message"]
    assert conn.llen("rq:queue:emails") == 1


def test_an_unexpected_error_is_a_500_json_without_details(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> redis.Redis:
        raise RuntimeError("boom: internal detail")

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: with_secrets(settings)
    app.dependency_overrides[get_connection] = broken
    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.get(CRON, headers=bearer(CRON_SECRET))
    assert reply.status_code == 500
    assert reply.json() == {"error": "internal_error"}
    assert "boom" in caplog.text  # logged, not returned


def test_unknown_paths_wrong_methods_and_bad_queries_are_json(
    make_client: Client, fake_conn: redis.Redis
) -> None:
    client = make_client(fake_conn)
    assert client.get("/api/nope").json()["error"] == "not_found"
    assert client.get("/docs").status_code == 404  # no docs or schema published
    wrong = client.delete(CRON, headers=bearer(CRON_SECRET))
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    bad = client.get(STATUS, params={"limit": -1}, headers=bearer(ADMIN_TOKEN))
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_request")
    assert bad.json()["details"][0]["loc"] == ["query", "limit"]


# --- monitoring ---


def test_queue_status_counts_and_a_masked_failure(
    make_client: Client, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    client = make_client(conn)
    [failing] = enqueue(conn, settings)
    fake_resend.fail_next(1, 422, "validation_error", "bad to ada@example.com")
    assert client.get(CRON, headers=bearer(CRON_SECRET)).json()["failed"] == 1
    enqueue(conn, settings, n=2, to="bob@example.com")
    reply = client.get(STATUS, headers=bearer(ADMIN_TOKEN))
    assert reply.status_code == 200
    body = reply.json()
    assert (body["queued"], body["started"], body["scheduled"], body["failed"]) == (2, 0, 0, 1)
    assert body["oldest_queued_age_s"] >= 0
    (entry,) = body["recent_failed"]
    assert entry["id"] == failing
    assert entry["to"] == ["a***@example.com"]
    assert entry["error"]["name"] == "validation_error"
    assert entry["error"]["message"] == "bad to a***@example.com"
    assert entry["attempts"] == 1
    assert client.get(STATUS, params={"limit": 0}, headers=bearer(ADMIN_TOKEN)).json()["recent_failed"] == []


def test_nothing_secret_in_any_reply(
    make_client: Client, fake_resend: FakeResend, settings: Settings
) -> None:
    """Against a password-protected server: no address, body, key, token or password in replies."""
    with EmbeddedRedis(password="sentinel-redis-pw") as server:
        conn = connect(server.url)
        try:
            client = make_client(conn, queue_redis_url=server.url)
            enqueue(conn, settings, n=2)
            fake_resend.fail_next(1, 422, "validation_error", "bad to ada@example.com")
            replies = [
                client.get(CRON, headers=bearer(CRON_SECRET)),
                client.get(STATUS, headers=bearer(ADMIN_TOKEN)),
                client.get("/api/health"),
                client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"ids": ["em_nope"]}),
                client.get(STATUS, headers=bearer("wrong")),
            ]
            assert client.get(STATUS, headers=bearer(ADMIN_TOKEN)).json()["failed"] == 1
            wrong_password = connect(server.url.replace("sentinel-redis-pw", "wrong-pw-123"), retries=0)
            refused = make_client(wrong_password).get(STATUS, headers=bearer(ADMIN_TOKEN))
            assert (refused.status_code, refused.json()["error"]) == (503, "queue_unavailable")
            replies.append(refused)
            wrong_password.close()
        finally:
            conn.close()
    text = "\n".join(r.text for r in replies)
    assert "a***@example.com" in text
    for secret in (
        "ada@example.com",
        "secret-html-body",
        TEXT,
        fake_resend.api_key,
        CRON_SECRET,
        ADMIN_TOKEN,
    ):
        assert secret not in text
    assert "sentinel-redis-pw" not in text and "wrong-pw-123" not in text and server.url not in text


# --- requeue ---


def fail_one(client: TestClient, conn: redis.Redis, settings: Settings, fake: FakeResend) -> str:
    [job_id] = enqueue(conn, settings)
    fake.fail_next(1, 422, "validation_error", "bad to ada@example.com")
    assert client.get(CRON, headers=bearer(CRON_SECRET)).json()["failed"] == 1
    return job_id


def test_requeue_by_id_then_a_drain_delivers_with_the_same_idempotency_key(
    make_client: Client, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    client = make_client(conn)
    job_id = fail_one(client, conn, settings, fake_resend)
    reply = client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"ids": [job_id, "em_unknown"]})
    assert reply.status_code == 200
    assert reply.json() == {
        "requeued": [job_id],
        "not_found": ["em_unknown"],
        "already_delivered": [],
        "needs_force": [],
        "needs_force_reason": None,
    }
    assert client.get(STATUS, headers=bearer(ADMIN_TOKEN)).json()["failed"] == 0
    assert client.get(CRON, headers=bearer(CRON_SECRET)).json()["sent"] == 1
    assert fake_resend.accepted[0].idempotency_key == "emailqueue-" + job_id


def test_requeue_all(
    make_client: Client, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    client = make_client(conn)
    ids = [fail_one(client, conn, settings, fake_resend) for _ in range(2)]
    reply = client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"all": True})
    assert sorted(reply.json()["requeued"]) == sorted(ids)
    assert client.get(CRON, headers=bearer(CRON_SECRET)).json()["sent"] == 2
    assert sorted(e.idempotency_key or "" for e in fake_resend.accepted) == sorted(
        f"emailqueue-{i}" for i in ids
    )


def test_a_concurrent_double_requeue_pushes_once(
    make_client: Client, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = fail_one(make_client(conn), conn, settings, fake_resend)
    clients = [make_client(conn), make_client(conn)]
    for client in clients:
        # FastAPI builds a route's dependencies lazily, on its first match, and two event loops
        # doing that at once race inside pydantic (a test artifact: a served app matches on one
        # loop). One refused request first, so the race below is only the requeue's own.
        assert client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={}).status_code == 422
    barrier = threading.Barrier(2)
    replies: list[dict[str, Any]] = []

    def requeue(client: TestClient) -> None:
        barrier.wait(5)
        replies.append(client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"ids": [job_id]}).json())

    threads = [threading.Thread(target=requeue, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r["requeued"] for r in replies) == [[], [job_id]]
    assert conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]
    assert drain(connection=conn, settings=settings).sent == 1
    assert len(fake_resend.accepted) == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="neither"),
        pytest.param({"all": False}, id="all-false"),
        pytest.param({"ids": []}, id="no-ids"),
        pytest.param({"ids": ["em_1"], "all": True}, id="both"),
        pytest.param({"ids": ["../etc"]}, id="bad-id"),
        pytest.param({"ids": "em_1"}, id="not-a-list"),
        pytest.param({"all": True, "extra": 1}, id="unknown-field"),
    ],
)
def test_requeue_needs_exactly_one_of_ids_or_all(
    make_client: Client, fake_conn: redis.Redis, body: Any
) -> None:
    client = make_client(fake_conn)
    reply = client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json=body)
    assert reply.status_code == 422
    assert reply.json()["error"] == "invalid_request"
    # Auth comes first: without the token a bad body is still a 401.
    assert client.post(REQUEUE, json=body).status_code == 401


# --- health ---


def test_health_ok_needs_no_token(make_client: Client, conn: redis.Redis) -> None:
    reply = make_client(conn, cron_secret=None, queue_admin_token=None).get("/api/health")
    assert reply.status_code == 200
    body = reply.json()
    assert body["ok"] is True and body["redis"]["ok"] is True and body["redis"]["latency_ms"] >= 0


# --- a real server ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_real_uvicorn_process_serves_the_cron_route(
    real_conn: redis.Redis, redis_url: str, settings: Settings, fake_resend: FakeResend, tmp_path: Path
) -> None:
    """``api.index:app`` as Vercel's runtime would load it, configured only by the environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMAIL", "RESEND_", "QUEUE_", "DRAIN_"))}
    for name in ("REDIS_URL", "KV_URL", "CRON_SECRET", "VERCEL_ENV"):
        env.pop(name, None)
    env.update(
        QUEUE_REDIS_URL=redis_url,
        CRON_SECRET=CRON_SECRET,
        RESEND_API_KEY=fake_resend.api_key,
        RESEND_API_URL=fake_resend.url,
        EMAIL_FROM="App <app@example.com>",
    )
    [job_id] = enqueue(real_conn, settings)
    log_path = tmp_path / "uvicorn.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.index:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,  # no .env of the developer's; the app is imported from ROOT via PYTHONPATH
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=base, timeout=10) as http:
                deadline = time.monotonic() + 30
                while True:
                    assert server.poll() is None, log_path.read_text()
                    try:
                        if http.get("/api/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "uvicorn did not come up:\n" + log_path.read_text()
                    time.sleep(0.05)
                assert http.get(CRON).status_code == 401
                reply = http.get(CRON, headers=bearer(CRON_SECRET))
                assert reply.status_code == 200, reply.text
                assert (reply.json()["sent"], reply.json()["remaining"]) == (1, 0)
        finally:
            server.terminate()
            returncode = server.wait(timeout=15)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -SIGTERM).
    assert returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Application shutdown complete" in log_path.read_text()
    (email,) = fake_resend.accepted
    assert email.idempotency_key == "emailqueue-" + job_id


def test_request_bodies_are_capped(make_client: Client, conn: redis.Redis) -> None:
    client = make_client(conn)
    big = b'{"ids": [' + b'"x",' * 40_000 + b'"x"]}'
    reply = client.post(
        REQUEUE, headers={**bearer(ADMIN_TOKEN), "content-type": "application/json"}, content=big
    )
    assert reply.status_code == 413
    assert reply.json()["error"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"ids": ['
        for _ in range(20_000):
            yield b'"abcdefgh",'
        yield b'"x"]}'

    reply = client.post(
        REQUEUE, headers={**bearer(ADMIN_TOKEN), "content-type": "application/json"}, content=chunks()
    )
    assert reply.status_code == 413
