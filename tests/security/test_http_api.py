"""The HTTP API under hostile requests: a schemathesis fuzz, request-body caps, constant-time token
checks, and admin replies that never reveal addresses, bodies, keys or passwords.

The app publishes no OpenAPI schema (``openapi_url=None``), and it should stay that way: a public
``/openapi.json`` on a production deploy maps the admin surface for anyone. The fuzz builds the
schema in-process from the app's own routes (``fastapi.openapi.utils.get_openapi``) instead.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import fakeredis
import pytest
import redis
import schemathesis
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from emailqueue import Settings, send_email
from emailqueue._check import main as check_main
from emailqueue.testing import FakeResend
from emailqueue.web import create_app
from emailqueue.web._deps import get_connection, get_settings
from tests.security.conftest import (
    ADMIN_TOKEN,
    CRON,
    CRON_SECRET,
    HEALTH,
    REQUEUE,
    STATUS,
    MakeClient,
    TestClient,
    bearer,
    with_secrets,
)

MB = 1024 * 1024

# --- the fuzz ------------------------------------------------------------------------------

OPENAPI = get_openapi(title="emailqueue", version="fuzz", routes=create_app().routes)
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_the_app_publishes_no_schema_or_docs(make_client: MakeClient) -> None:
    client = make_client(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    for path in ("/openapi.json", "/docs", "/redoc", "/api/openapi.json"):
        reply = client.get(path)
        assert (reply.status_code, reply.json()["error"]) == (404, "not_found"), path


def test_the_in_process_schema_covers_every_public_route() -> None:
    """So the fuzz below really reaches each route (the dev outbox is hidden: tested apart)."""
    operations = {(path, method) for path, item in OPENAPI["paths"].items() for method in item}
    assert operations == {
        (CRON, "get"),
        (CRON, "post"),
        (STATUS, "get"),
        (REQUEUE, "post"),
        (HEALTH, "get"),
        (EMAILS, "get"),
        (SUPPRESSIONS, "get"),
        (SUPPRESSIONS + "/sync", "post"),
        (SUPPRESSIONS + "/remove", "post"),
        (WEBHOOK, "post"),
    }


@pytest.fixture
def fuzz_app(settings: Settings, fake_resend: FakeResend) -> FastAPI:
    """The app on fakeredis holding one queued and one failed email, and the fake Resend."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    send_email(to="ada@example.com", subject="s", text="t", connection=conn, settings=settings)
    app = create_app()
    secret = SecretStr("whsec_" + base64.b64encode(b"fuzz-webhook-secret-0123456789ab").decode())
    app.dependency_overrides[get_settings] = lambda: with_secrets(settings, resend_webhook_secret=secret)
    app.dependency_overrides[get_connection] = lambda: conn
    return app


#: Issue 14's JSON routes; the HTML dashboard is not in the schema (tests/test_dashboard*.py).
EMAILS = "/api/admin/emails"
SUPPRESSIONS = "/api/admin/suppressions"
WEBHOOK = "/api/webhooks/resend"
TOKENS = {CRON: CRON_SECRET, STATUS: ADMIN_TOKEN, REQUEUE: ADMIN_TOKEN, EMAILS: ADMIN_TOKEN}
TOKENS |= {
    SUPPRESSIONS: ADMIN_TOKEN,
    SUPPRESSIONS + "/sync": ADMIN_TOKEN,
    SUPPRESSIONS + "/remove": ADMIN_TOKEN,
}


@schema.parametrize()
@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_no_500_and_every_reply_is_json(case: Any, fuzz_app: FastAPI) -> None:
    """Whatever schemathesis sends (as generated, then with the right token so the handlers and
    body validation run too): never a 5xx, always a JSON body."""
    authorized = {"Authorization": f"Bearer {TOKENS[case.path]}"} if case.path in TOKENS else {}
    for headers in ({}, authorized):
        response = case.call(app=fuzz_app, headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
        (content_type,) = response.headers["content-type"]  # schemathesis: name -> list of values
        assert content_type.startswith("application/json"), response.headers
        response.json()


@pytest.mark.parametrize("path", ["/api/dev/outbox", "/api/dev/outbox/abc"])
def test_the_dev_outbox_pages_are_html_in_dev_mode_and_a_json_404_otherwise(
    make_client: MakeClient, path: str, tmp_path: Any
) -> None:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    outside = make_client(conn).get(path)
    assert (outside.status_code, outside.json()["error"]) == (404, "not_found")
    production = make_client(conn, emailqueue_dev=True, vercel_env="production").get(path)
    assert (production.status_code, production.json()["error"]) == (404, "not_found")
    dev = make_client(conn, emailqueue_dev=True, emailqueue_outbox_dir=str(tmp_path)).get(path)
    if path.endswith("/outbox"):
        assert dev.status_code == 200 and dev.headers["content-type"].startswith("text/html")
    else:
        assert (dev.status_code, dev.json()["error"]) == (404, "not_found")  # no such email


# --- request bodies are capped ------------------------------------------------------------------


def drive(
    app: FastAPI, method: str, path: str, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, int]:
    """Send a request straight to the ASGI app, body in ``chunks``. Returns (status, chunks the app
    pulled): how much of the body the server actually read."""
    pulled = 0
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        await asyncio.sleep(3600)  # the client has nothing more to say; a well-behaved app never asks
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def run() -> None:
        await asyncio.wait_for(app(scope, receive, send), timeout=10)

    asyncio.run(run())
    return status[0], pulled


@pytest.fixture
def capped_app(settings: Settings) -> FastAPI:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: with_secrets(settings)
    app.dependency_overrides[get_connection] = lambda: fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return app


CHUNK = 64 * 1024
TEN_MB = [b'{"ids": ["' + b"a" * (CHUNK - 10)] + [b"a" * CHUNK] * (10 * MB // CHUNK - 1)


@pytest.mark.parametrize(
    ("method", "path", "auth", "reads_body"),
    [
        pytest.param("POST", REQUEUE, ADMIN_TOKEN, True, id="requeue"),
        pytest.param("POST", REQUEUE, None, True, id="requeue-unauthenticated"),
        pytest.param("POST", CRON, CRON_SECRET, False, id="cron-post"),
        pytest.param("GET", HEALTH, None, False, id="health-get-with-a-body"),
    ],
)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_10_mb_body_is_refused_quickly_without_being_read(
    capped_app: FastAPI, method: str, path: str, auth: str | None, reads_body: bool, declared: bool
) -> None:
    """The server reads at most 1 MiB of a 10 MB body (today's cap is 64 KB), and before auth: an
    unauthenticated client cannot make it buffer more. A declared length over the cap is refused on
    the header alone; a chunked body is refused once a route reads past the cap (a route that reads
    no body, like the cron GET/POST, simply never pulls it)."""
    headers = {"content-type": "application/json", **(bearer(auth) if auth else {})}
    if declared:
        headers["content-length"] = str(sum(map(len, TEN_MB)))
    status, pulled = drive(capped_app, method, path, headers, TEN_MB)
    assert pulled * CHUNK <= 1 * MB, f"the app read {pulled * CHUNK} bytes of a 10 MB body"
    if declared:
        assert (status, pulled) == (413, 0)
    elif reads_body:
        assert status == 413
    else:
        assert status < 500


def test_the_413_is_json_and_a_normal_body_still_works(make_client: MakeClient) -> None:
    client = make_client(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    big = client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), content=b"x" * (10 * MB))
    assert big.status_code == 413
    assert big.headers["content-type"].startswith("application/json")
    assert big.json()["error"] == "payload_too_large"
    ok = client.post(
        REQUEUE, headers=bearer(ADMIN_TOKEN), json={"ids": [f"em_{i:032x}" for i in range(1000)]}
    )
    assert ok.status_code == 200 and len(ok.json()["not_found"]) == 1000  # the largest valid body fits


# --- tokens are compared in constant time --------------------------------------------------------

ROUTES = [
    pytest.param("GET", CRON, CRON_SECRET, None, id="cron-get"),
    pytest.param("POST", CRON, CRON_SECRET, None, id="cron-post"),
    pytest.param("GET", STATUS, ADMIN_TOKEN, None, id="status"),
    pytest.param("POST", REQUEUE, ADMIN_TOKEN, {"ids": ["em_x"]}, id="requeue"),
]


@pytest.fixture
def compare_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool | None], list[tuple[Any, Any]]]]:
    """Replace ``hmac.compare_digest`` (what ``emailqueue.web._auth`` calls) with a recorder that
    returns the real answer, or a forced one."""
    real = hmac.compare_digest
    calls: list[tuple[Any, Any]] = []
    forced: list[bool | None] = [None]

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b) if forced[0] is None else forced[0]

    monkeypatch.setattr("emailqueue.web._auth.hmac.compare_digest", spy)

    def arm(force: bool | None = None) -> list[tuple[Any, Any]]:
        calls.clear()
        forced[0] = force
        return calls

    yield arm


@pytest.mark.parametrize(("method", "path", "token", "body"), ROUTES)
@pytest.mark.parametrize(
    "sent",
    [
        pytest.param("RIGHT", id="right"),
        pytest.param("Bearer x", id="short"),
        pytest.param("LAST_CHAR", id="last-char-differs"),
        pytest.param("Bearer " + "z" * 4096, id="long"),
        pytest.param(None, id="missing"),
    ],
)
def test_every_token_check_goes_through_compare_digest_and_nothing_else(
    make_client: MakeClient,
    compare_spy: Callable[[bool | None], list[tuple[Any, Any]]],
    method: str,
    path: str,
    token: str,
    body: Any,
    sent: str | None,
) -> None:
    """One ``hmac.compare_digest`` per request, whatever the length or prefix of what was sent (no
    early ``==`` or length check), and its answer alone decides: forced False refuses the right
    token, forced True admits a wrong one. A timing measurement would only be flaky."""
    header = {"RIGHT": f"Bearer {token}", "LAST_CHAR": f"Bearer {token[:-1]}~"}.get(sent or "", sent)
    headers = {} if header is None else {"Authorization": header}
    client = make_client(fakeredis.FakeRedis(server=fakeredis.FakeServer()))

    calls = compare_spy(None)
    reply = client.request(method, path, headers=headers, json=body)
    assert len(calls) == 1
    given, expected = calls[0]
    assert isinstance(given, bytes) and isinstance(expected, bytes)
    assert expected == f"Bearer {token}".encode()
    assert given == (header or "").encode()
    assert reply.status_code == (200 if sent == "RIGHT" else 401)

    compare_spy(sent != "RIGHT")  # invert the answer: the reply must follow it
    flipped = client.request(method, path, headers=headers, json=body)
    assert flipped.status_code == (401 if sent == "RIGHT" else 200)


# --- admin replies reveal nothing -----------------------------------------------------------------

SECRET_KEY = "re_LeakedKey0123456789abcdefABCDEF01"
PASSWORD = "Redis-Pw-0f9e8d7c"
ADDRESSES = ["ada.lovelace@example.com", "grace.hopper@example.org", "alan.turing@example.net"]


def fail_by_rq(conn: redis.Redis, job_id: str, exc_string: str) -> None:
    """A job RQ failed itself (a crash before our code ran): only RQ's traceback records why."""
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    job = Job.create("emailqueue._jobs.deliver", kwargs={"payload": {}}, connection=conn, id=job_id,
                     serializer=JSONSerializer, origin="emails", status=JobStatus.FAILED)  # fmt: skip
    job.save()
    with conn.pipeline() as pipe:
        FailedJobRegistry(queue=queue).add(job, ttl=3600, exc_string=exc_string, pipeline=pipe)
        Result.create_failure(job, 3600, exc_string=exc_string, pipeline=pipe)
        pipe.execute()


def test_admin_replies_never_reveal_addresses_bodies_keys_or_passwords(
    make_client: MakeClient, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    client = make_client(conn, drain_concurrency=1)
    ada, grace, alan = ADDRESSES
    for to, subject in [(ada, "Receipt"), (grace, f"Re: your note to {alan}")]:
        send_email(to=f"Ada L <{to}>", cc=[alan], subject=subject, html="<p>BODY-HTML-77</p>",
                   text="BODY-TEXT-77", connection=conn, settings=settings)  # fmt: skip
    fake_resend.fail_next(
        2, 422, "validation_error",
        f"cannot send to {ada} (cc {alan}) with key {SECRET_KEY} via redis://default:{PASSWORD}@cache:6379",
    )  # fmt: skip
    assert client.get(CRON, headers=bearer(CRON_SECRET)).json()["failed"] == 2
    fail_by_rq(
        conn,
        "em_crashed",
        f"Traceback ...\nValueError: bad {grace}, key {SECRET_KEY}, rediss://default:{PASSWORD}@cache:6379",
    )

    replies = [
        client.get(STATUS, headers=bearer(ADMIN_TOKEN)),
        client.get(STATUS, params={"limit": 500}, headers=bearer(ADMIN_TOKEN)),
        client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"ids": ["em_crashed", "em_missing"]}),
        client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"all": True}),
        client.post(REQUEUE, headers=bearer(ADMIN_TOKEN), json={"ids": [ada]}),  # 422
        client.get(STATUS, headers=bearer(CRON_SECRET)),  # 401
        client.get(HEALTH),
    ]
    status = replies[0].json()
    assert status["failed"] == 3
    shown = {f["id"]: f for f in status["recent_failed"]}
    assert shown["em_crashed"]["error"]["message"].startswith("bad g***@example.org")
    assert all(f["to"] in (["a***@example.com"], ["g***@example.org"], []) for f in shown.values())
    assert replies[2].json() == {
        "requeued": ["em_crashed"],
        "not_found": ["em_missing"],
        "already_delivered": [],
        "needs_force": [],
        "needs_force_reason": None,
    }
    assert [r.status_code for r in replies[4:]] == [422, 401, 200]
    text = "\n".join(r.text for r in replies)
    assert "a***@example.com" in text and "re_***" in text  # masked, not dropped
    for secret in [
        *ADDRESSES,
        SECRET_KEY,
        PASSWORD,
        "BODY-HTML-77",
        "BODY-TEXT-77",
        CRON_SECRET,
        ADMIN_TOKEN,
    ]:
        assert secret not in text, secret


def test_a_malformed_redis_url_is_a_503_that_names_the_variable_but_not_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"redis://default:{PASSWORD}@127.0.0.1:notaport/0"
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: with_secrets(
        Settings(_env_file=None, queue_redis_url=url)  # type: ignore[call-arg]
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        replies = [
            client.get(STATUS, headers=bearer(ADMIN_TOKEN)),
            client.get(CRON, headers=bearer(CRON_SECRET)),
        ]
    for reply in replies:
        assert PASSWORD not in reply.text
        assert (reply.status_code, reply.json()["error"]) == (503, "misconfigured"), reply.text
        assert "QUEUE_REDIS_URL" in reply.json()["message"]
    assert check_main(["--url", url, "--json"]) == 1
    out = capsys.readouterr().out
    assert PASSWORD not in out
    steps = {s["name"]: s for s in json.loads(out)["steps"]}
    assert steps["url"]["status"] == "fail" and "not a valid Redis URL" in steps["url"]["detail"]
