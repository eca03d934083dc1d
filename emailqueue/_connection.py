"""Redis connections, and the one place redis-py's exceptions become :class:`QueueError`.

When Redis cannot be used at all (refused, no such host, TLS against a plain server, a missing
or wrong password), the error is the connection checker's diagnosis, the same line
``emailqueue check`` prints, with its fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import SSLConnection, UnixDomainSocketConnection
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


#: Replies that mean "this client cannot use this server at all", not "this command failed".
_CONNECTION_REPLIES = ("NOAUTH", "WRONGPASS", "Protocol error", "invalid password", "ERR AUTH")


def url_of(connection: redis.Redis) -> tuple[str, str | None] | None:
    """The URL (and CA file) a redis-py client was made with, rebuilt from its pool; None if
    it cannot tell (a fake client, say). It holds the password: never print it unredacted."""
    try:
        pool = connection.connection_pool
        kw: dict[str, Any] = dict(pool.connection_kwargs)
        cls = pool.connection_class
    except AttributeError:
        return None
    user, password = kw.get("username"), kw.get("password")
    auth = ""
    if password is not None:
        auth = f"{quote(user or '', safe='')}:{quote(password, safe='')}@"
    elif user:
        auth = f"{quote(user, safe='')}@"
    if isinstance(cls, type) and issubclass(cls, UnixDomainSocketConnection):
        query = urlencode({"db": kw.get("db", 0)})
        return f"unix://{auth}{kw.get('path', '')}?{query}", None
    scheme = "rediss" if isinstance(cls, type) and issubclass(cls, SSLConnection) else "redis"
    url = f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
    if scheme == "rediss" and str(kw.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
        url += "?ssl_cert_reqs=none"
    return url, kw.get("ssl_ca_certs")


def diagnosis(connection: redis.Redis | None, *, source: str = "QUEUE_REDIS_URL") -> str | None:
    """The checker's one-line account of why ``connection`` cannot reach its Redis, with the fix;
    None if it connects (or cannot be examined)."""
    from ._check_redis import diagnose

    found = url_of(connection) if connection is not None else None
    if found is None:
        return None
    result = diagnose(found[0], source=source, ca_cert=found[1])
    if result is None:
        return None
    return redact_url(f"{result.detail}; fix: {result.fix}" if result.fix else result.detail)


def _cannot_connect(exc: redis.RedisError) -> bool:
    # A timeout only while connecting (a TLS handshake with a plain server, a dropped SYN): a
    # server that froze mid-command is what the timeout says, and a diagnosis would only add its
    # own timeouts to the caller's wait.
    if isinstance(exc, redis.ResponseError) and not isinstance(exc, redis.AuthenticationError):
        return str(exc).startswith(_CONNECTION_REPLIES)
    if isinstance(exc, redis.TimeoutError):
        return str(exc).startswith("Timeout connecting")
    return isinstance(exc, redis.ConnectionError)


@contextmanager
def redis_errors(action: str, connection: redis.Redis | None = None) -> Iterator[None]:
    """Translate redis-py exceptions raised inside the block into :class:`QueueError`.

    With ``connection``, a failure to connect at all becomes the checker's diagnosis (see the
    module docstring) instead of redis-py's own message.
    """
    try:
        yield
    except redis.RedisError as exc:
        if _cannot_connect(exc):
            why = diagnosis(connection)
            if why is not None:
                raise QueueError(f"{action}: cannot reach Redis: {why}") from exc
        raise _translate(action, exc) from exc


def _translate(action: str, exc: redis.RedisError) -> QueueError:
    if isinstance(exc, redis.AuthenticationError):
        return QueueError(f"{action}: Redis refused the password (check QUEUE_REDIS_URL)")
    if isinstance(exc, redis.ConnectionError):
        if "certificate" in str(exc).lower() or "ssl" in str(exc).lower():
            return QueueError(
                f"{action}: the Redis server's TLS certificate was not accepted ({exc}); "
                "set QUEUE_REDIS_CA_CERT to the CA file that signed it"
            )
        return QueueError(f"{action}: cannot reach Redis ({exc})")
    if isinstance(exc, redis.TimeoutError):
        return QueueError(f"{action}: Redis timed out ({exc})")
    return QueueError(f"{action}: Redis error: {exc}")


def ensure_reachable(connection: redis.Redis, action: str) -> None:
    """One PING; if Redis cannot be used, raise :class:`QueueError` with the diagnosis.

    Commands call it first, so a bad URL is reported before anything else (a missing key, say).
    """
    with redis_errors(action, connection):
        connection.ping()
