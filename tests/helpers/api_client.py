"""The HTTP API under test: fixed secrets, route paths, and a TestClient factory on a fresh app
whose settings and Redis connection are the test's (``app.dependency_overrides``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import redis
from pydantic import SecretStr

from emailqueue import Settings
from emailqueue.web import create_app
from emailqueue.web._deps import get_connection, get_settings

with warnings.catch_warnings():
    # Starlette's TestClient prefers httpx2 now; httpx, already a dependency, works the same.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient as TestClient

CRON = "/api/cron/process-email-queue"
STATUS = "/api/admin/queue-status"
REQUEUE = "/api/admin/failed/requeue"
HEALTH = "/api/health"
CRON_SECRET = "cron-secret-0123456789"
ADMIN_TOKEN = "admin-token-9876543210"

MakeClient = Callable[..., TestClient]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_secrets(settings: Settings, **update: Any) -> Settings:
    values: dict[str, Any] = {
        "cron_secret": SecretStr(CRON_SECRET),
        "queue_admin_token": SecretStr(ADMIN_TOKEN),
        **update,
    }
    return settings.model_copy(update=values)


def client_factory(settings: Settings) -> Iterator[MakeClient]:
    """Body of the ``make_client`` fixture: ``make_client(connection, **setting_overrides)``."""
    clients: list[TestClient] = []

    def make(connection: redis.Redis, *, raise_server_exceptions: bool = True, **update: Any) -> TestClient:
        app = create_app()
        app.dependency_overrides[get_settings] = lambda: with_secrets(settings, **update)
        app.dependency_overrides[get_connection] = lambda: connection
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
