"""emailqueue inside someone else's app: `create_router(prefix=...)` adds the routes to an
existing FastAPI app and leaves its other routes alone; `cron_authorized` guards a cron route in
any other framework (a Starlette app here), failing closed when CRON_SECRET is unset."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.responses import JSONResponse as StarletteJSON
from starlette.routing import Route

from emailqueue import ConfigurationError, Settings, drain, send_email
from emailqueue.testing import FakeResend
from emailqueue.web import create_router, cron_authorized
from emailqueue.web._deps import get_connection, get_settings
from tests.helpers.api_client import ADMIN_TOKEN, CRON_SECRET, TestClient, bearer, with_secrets

PREFIX = "/jobs/email"


class TeapotError(Exception):
    pass


def user_app(conn: redis.Redis, settings: Settings, prefix: str = PREFIX) -> FastAPI:
    """An existing app: its own route, its own error handler, then emailqueue's routes."""
    app = FastAPI()

    @app.get("/api/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        if item_id == 418:
            raise TeapotError
        if item_id == 404:
            raise HTTPException(404, "no such item")
        return {"id": item_id}

    @app.exception_handler(TeapotError)
    async def teapot(request: Request, exc: TeapotError) -> JSONResponse:
        return JSONResponse({"teapot": True}, status_code=418)

    app.include_router(create_router(prefix=prefix))
    app.dependency_overrides[get_settings] = lambda: settings
    app.dependency_overrides[get_connection] = lambda: conn
    return app


def enqueue(conn: redis.Redis, settings: Settings, n: int) -> list[str]:
    return [
        send_email(to=f"user{i}@example.com", subject="hi", text="hello", connection=conn, settings=settings)
        for i in range(n)
    ]


def test_the_routes_answer_under_the_prefix_and_the_apps_own_routes_are_untouched(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    settings = with_secrets(settings, email_from="App <app@example.com>")
    with TestClient(user_app(conn, settings)) as client:
        assert client.get("/api/items/7").json() == {"id": 7}
        # The app's own error handling and 404 shape, not emailqueue's.
        assert client.get("/api/items/418").status_code == 418
        assert client.get("/api/items/404").json() == {"detail": "no such item"}
        assert client.get("/nope").json() == {"detail": "Not Found"}
        # emailqueue's routes live under the prefix only.
        assert client.get("/api/health").status_code == 404
        assert client.get(f"{PREFIX}/health").json()["ok"] is True
        enqueue(conn, settings, 2)
        cron = f"{PREFIX}/cron/process-email-queue"
        denied = client.get(cron, headers=bearer("wrong"))
        assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
        ran = client.get(cron, headers=bearer(CRON_SECRET))
        assert ran.status_code == 200 and ran.json()["sent"] == 2
        assert len(fake_resend.accepted) == 2
        status = client.get(f"{PREFIX}/admin/queue-status", headers=bearer(ADMIN_TOKEN))
        assert status.status_code == 200 and status.json()["queued"] == 0


def test_an_unset_secret_closes_the_route_with_a_503_json_even_in_a_foreign_app(
    conn: redis.Redis, settings: Settings
) -> None:
    with TestClient(user_app(conn, settings)) as client:
        reply = client.get(f"{PREFIX}/cron/process-email-queue", headers=bearer("anything"))
    assert reply.status_code == 503
    assert reply.json()["error"] == "misconfigured" and "CRON_SECRET" in reply.json()["message"]


def test_bad_bodies_are_json_errors_in_a_foreign_app(conn: redis.Redis, settings: Settings) -> None:
    with TestClient(user_app(conn, with_secrets(settings))) as client:
        requeue = f"{PREFIX}/admin/failed/requeue"
        invalid = client.post(requeue, headers=bearer(ADMIN_TOKEN), json={"ids": []})
        assert invalid.status_code == 422 and invalid.json()["error"] == "invalid_request"
        huge = client.post(requeue, headers=bearer(ADMIN_TOKEN), content=b"x" * 70_000)
        assert huge.status_code == 413 and huge.json()["error"] == "payload_too_large"


def test_an_empty_prefix_puts_the_routes_at_the_root(conn: redis.Redis, settings: Settings) -> None:
    with TestClient(user_app(conn, settings, prefix="")) as client:
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize("prefix", ["api", "/api/", "jobs/"])
def test_a_malformed_prefix_is_refused_with_the_fix(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="must start with '/'"):
        create_router(prefix=prefix)


def test_cron_authorized_accepts_only_the_exact_bearer_token(settings: Settings) -> None:
    settings = with_secrets(settings)
    assert cron_authorized(f"Bearer {CRON_SECRET}", settings) is True
    for wrong in (None, "", CRON_SECRET, f"bearer {CRON_SECRET}", f"Bearer {CRON_SECRET}x", "Bearer "):
        assert cron_authorized(wrong, settings) is False, wrong


def test_cron_authorized_fails_closed_when_the_secret_is_unset(settings: Settings) -> None:
    for unset in (None, SecretStr(""), SecretStr("   ")):
        with pytest.raises(ConfigurationError, match="CRON_SECRET is not set"):
            cron_authorized("Bearer ", settings.model_copy(update={"cron_secret": unset}))
    assert cron_authorized(None, settings.model_copy(update={"cron_secret": None, "emailqueue_dev": True}))


def test_cron_authorized_reads_the_environment_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file
    monkeypatch.setenv("CRON_SECRET", "from-the-env")
    assert cron_authorized("Bearer from-the-env") is True
    assert cron_authorized("Bearer other") is False


def test_the_any_framework_recipe_drains_from_a_starlette_cron_route(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """The README's recipe for a framework without FastAPI's dependencies."""
    settings = with_secrets(settings, email_from="App <app@example.com>")

    async def cron(request):  # type: ignore[no-untyped-def]
        try:
            allowed = cron_authorized(request.headers.get("authorization"), settings)
        except ConfigurationError as exc:
            return StarletteJSON({"error": "misconfigured", "message": str(exc)}, status_code=503)
        if not allowed:
            return StarletteJSON({"error": "unauthorized"}, status_code=401)
        return StarletteJSON(drain(connection=conn, settings=settings).to_dict())

    app = Starlette(routes=[Route("/api/cron/process-email-queue", cron)])
    enqueue(conn, settings, 3)
    with TestClient(app) as client:
        assert client.get("/api/cron/process-email-queue").status_code == 401
        ran = client.get("/api/cron/process-email-queue", headers=bearer(CRON_SECRET))
    assert ran.status_code == 200 and ran.json()["sent"] == 3
    assert len(fake_resend.accepted) == 3


def test_the_web_modules_public_names() -> None:
    import emailqueue.web

    assert emailqueue.web.__all__ == ["create_app", "create_router", "cron_authorized"]
