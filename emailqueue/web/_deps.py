"""Dependencies of the routes: settings, the Redis connection and bearer-token auth.

Tests replace :func:`get_settings` and :func:`get_connection` through
``app.dependency_overrides``; nothing here runs at import time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

import redis
from fastapi import Depends, Header, HTTPException, status
from pydantic import SecretStr

from emailqueue import Settings, load_settings
from emailqueue._connection import connect
from emailqueue.web._auth import bearer_authorized


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read on first use and kept for the process's life."""
    return load_settings()


SettingsDep = Annotated[Settings, Depends(get_settings)]


@lru_cache(maxsize=4)
def _connection_for(url: str, ca_certs: str | None) -> redis.Redis:
    # One client (and connection pool) per process, reused by warm invocations.
    return connect(url, ca_certs=ca_certs)


def get_connection(settings: SettingsDep) -> redis.Redis:
    """The process's Redis client for ``QUEUE_REDIS_URL``; it connects on first use."""
    return _connection_for(settings.require_redis_url(), settings.queue_redis_ca_cert)


ConnectionDep = Annotated[redis.Redis, Depends(get_connection)]


def _check_bearer(
    authorization: str | None, secret: SecretStr | None, variable: str, settings: Settings
) -> None:
    """Fail closed: no secret configured is a 503 (except in dev mode), a wrong token a 401."""
    if not bearer_authorized(authorization, secret, variable, dev_mode=settings.dev_mode):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=f"missing or wrong bearer token (Authorization: Bearer ${variable})",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_cron_secret(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """``Authorization: Bearer $CRON_SECRET``, as Vercel Cron sends it."""
    _check_bearer(authorization, settings.cron_secret, "CRON_SECRET", settings)


def require_admin_token(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """``Authorization: Bearer $QUEUE_ADMIN_TOKEN``."""
    _check_bearer(authorization, settings.queue_admin_token, "QUEUE_ADMIN_TOKEN", settings)


CronAuthorized = Annotated[None, Depends(require_cron_secret)]
AdminAuthorized = Annotated[None, Depends(require_admin_token)]
