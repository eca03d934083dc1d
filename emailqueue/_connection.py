"""Redis connections, and the one place redis-py's exceptions become :class:`QueueError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._exceptions import ConfigurationError, QueueError
from ._redact import redact_url

if TYPE_CHECKING:
    from ._settings import Settings


def connect(
    url: str,
    *,
    retries: int = 1,
    socket_timeout: float = 2.0,
    connect_timeout: float = 2.0,
    backoff_cap: float = 0.5,
    ca_certs: str | None = None,
) -> redis.Redis:
    """A redis-py client for ``url`` (``redis://`` or ``rediss://``) with bounded retries.

    A command that hits a dropped connection (Upstash closes idle ones) or no reply within
    ``socket_timeout`` is retried ``retries`` times with exponential backoff (capped at
    ``backoff_cap`` seconds), then raises: an unresponsive Redis costs a caller about 4 s, not
    minutes. Every command emailqueue sends is a single atomic step, so a retry is safe.
    Nothing is sent at this point: the connection opens on first use. No health-check PINGs,
    RESP2 and no ``CLIENT SETINFO``: Upstash bills every command, and redis-py's default
    handshake (HELLO 3, CLIENT MAINT_NOTIFICATIONS, two CLIENT SETINFO) costs four round trips
    per new connection.

    ``ca_certs`` is a CA bundle to verify a ``rediss://`` server against (a self-signed or
    private CA); by default the system's trust store is used.

    Raises:
        ConfigurationError: the URL cannot be parsed, or a CA file is given for a plain URL.
    """
    tls: dict[str, Any] = {}
    if ca_certs:
        if not url.startswith("rediss://"):
            raise ConfigurationError("QUEUE_REDIS_CA_CERT is set, but the Redis URL is not rediss:// (TLS)")
        tls["ssl_ca_certs"] = ca_certs
    try:
        return redis.Redis.from_url(
            url,
            **tls,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(ExponentialBackoff(cap=backoff_cap, base=0.05), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            protocol=2,
            driver_info=None,
        )
    except ValueError as exc:
        raise ConfigurationError(
            f"QUEUE_REDIS_URL {redact_url(url)} is not a valid Redis URL: {exc}"
        ) from None


def connect_from(settings: Settings) -> redis.Redis:
    """The queue's Redis, as configured (URL and CA file)."""
    return connect(settings.require_redis_url(), ca_certs=settings.queue_redis_ca_cert)


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Translate redis-py exceptions raised inside the block into :class:`QueueError`."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise QueueError(f"{action}: Redis refused the password (check QUEUE_REDIS_URL)") from exc
    except redis.ConnectionError as exc:
        if "certificate" in str(exc).lower() or "ssl" in str(exc).lower():
            raise QueueError(
                f"{action}: the Redis server's TLS certificate was not accepted ({exc}); "
                "set QUEUE_REDIS_CA_CERT to the CA file that signed it"
            ) from exc
        raise QueueError(f"{action}: cannot reach Redis ({exc})") from exc
    except redis.TimeoutError as exc:
        raise QueueError(f"{action}: Redis timed out ({exc})") from exc
    except redis.RedisError as exc:
        raise QueueError(f"{action}: Redis error: {exc}") from exc
