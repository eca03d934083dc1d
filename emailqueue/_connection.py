"""Redis connections, and the one place redis-py's exceptions become :class:`QueueError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._exceptions import ConfigurationError, QueueError
from ._redact import redact_url


def connect(
    url: str,
    *,
    retries: int = 3,
    socket_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    backoff_cap: float = 1.0,
) -> redis.Redis:
    """A redis-py client for ``url`` (``redis://`` or ``rediss://``) with bounded retries.

    A command that hits a dropped connection is retried ``retries`` times with exponential
    backoff (capped at ``backoff_cap`` seconds), then raises. Nothing is sent at this point:
    the connection opens on first use. No health-check PINGs, RESP2 and no ``CLIENT SETINFO``:
    Upstash bills every command, and redis-py's default handshake (HELLO 3, CLIENT
    MAINT_NOTIFICATIONS, two CLIENT SETINFO) costs four round trips per new connection.

    Raises:
        ConfigurationError: the URL cannot be parsed.
    """
    try:
        return redis.Redis.from_url(
            url,
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


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Translate redis-py exceptions raised inside the block into :class:`QueueError`."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise QueueError(f"{action}: Redis refused the password (check QUEUE_REDIS_URL)") from exc
    except redis.ConnectionError as exc:
        raise QueueError(f"{action}: cannot reach Redis ({exc})") from exc
    except redis.TimeoutError as exc:
        raise QueueError(f"{action}: Redis timed out ({exc})") from exc
    except redis.RedisError as exc:
        raise QueueError(f"{action}: Redis error: {exc}") from exc
