"""Count what a piece of code costs in Redis: commands run server-side, and client round trips.

Upstash bills every command, Lua-internal ones included, so the suite measures commands on the
server with ``INFO commandstats`` (never ``CONFIG RESETSTAT``, which managed Redis forbids) and
round trips on the client by counting how often redis-py writes to a socket.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from redis import Redis
from redis.connection import Connection, SSLConnection


def command_stats(conn: Redis) -> dict[str, int]:
    """Return ``{command: calls}`` from ``INFO commandstats``.

    Names are lower-case without the ``cmdstat_`` prefix; subcommands keep their container, as in
    ``client|setinfo``. ``calls`` counts commands that ran (Lua ``redis.call``s included), not
    ones the server rejected before running them (unknown commands, NOAUTH, wrong arity).
    """
    stats: dict[str, int] = {}
    for key, value in conn.info("commandstats").items():
        name = str(key).lower().removeprefix("cmdstat_")
        if isinstance(value, dict):
            calls = value["calls"]
        else:  # an unparsed "calls=3,usec=..." string, from clients that don't split it
            calls = dict(item.split("=", 1) for item in str(value).split(","))["calls"]
        stats[name] = int(calls)
    return stats


class CommandCounter:
    """Commands the server ran inside a ``with`` block, from every client, as seen by the server.

    ``with CommandCounter(conn) as counter: ...`` then read ``counter.total`` and
    ``counter.by_command``.

    Each snapshot is one ``INFO commandstats``. The server updates a command's stats after running
    it, so a snapshot never sees itself, while the closing snapshot sees the opening one: the raw
    difference holds exactly one ``info`` call of ours, which is subtracted. ``info`` calls made
    by the code under test are still counted.

    If ``conn``'s pool has to open a new connection for a snapshot, its handshake runs before
    the snapshot's INFO: the opening one's handshake is excluded, the closing one's included.
    Open the connection first (e.g. ``conn.ping()``) to keep it out.

    Raises:
        RuntimeError: A count went down between snapshots (the server restarted or its stats
            were reset), or the result was read before the block ended.
    """

    def __init__(self, conn: Redis) -> None:
        self._conn = conn
        self._before: dict[str, int] | None = None
        self._diff: dict[str, int] | None = None

    def __enter__(self) -> CommandCounter:
        self._before = command_stats(self._conn)
        self._diff = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._before is not None, "CommandCounter exited without entering"
        after = command_stats(self._conn)
        after["info"] = after.get("info", 0) - 1  # the opening snapshot's own INFO
        diff: dict[str, int] = {}
        for name in self._before.keys() | after.keys():
            delta = after.get(name, 0) - self._before.get(name, 0)
            if delta < 0:
                raise RuntimeError(f"{name!r} calls went down: the server restarted or its stats were reset")
            if delta:
                diff[name] = delta
        self._diff = dict(sorted(diff.items()))

    @property
    def by_command(self) -> dict[str, int]:
        """``{command: calls}`` for commands run during the block (commands with 0 calls omitted)."""
        if self._diff is None:
            raise RuntimeError("read CommandCounter results after its with-block ends")
        return self._diff

    @property
    def total(self) -> int:
        """All commands run during the block."""
        return sum(self.by_command.values())


class RoundTripCounter:
    """Client-to-server round trips made through connections built by :func:`counting_redis`.

    redis-py writes each request to the socket with one ``send_packed_command`` call: a single
    command, a whole pipeline (5 commands = 1 round trip), a whole MULTI/EXEC, an EVALSHA. So
    that call is what is counted. The handshake a new connection makes (HELLO, CLIENT SETINFO,
    ...; 4 round trips with redis-py 8.1) is counted apart, in ``handshake_round_trips``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # RQ's scheduler and pubsub threads share the counter
        self.round_trips = 0
        self.handshake_round_trips = 0
        self.connections = 0

    def reset(self) -> None:
        """Zero all counts."""
        with self._lock:
            self.round_trips = self.handshake_round_trips = self.connections = 0

    def _record(self, *, handshake: bool) -> None:
        with self._lock:
            if handshake:
                self.handshake_round_trips += 1
            else:
                self.round_trips += 1

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1


class _CountingMixin:
    # The counter travels in the pool's connection kwargs, so pools rebuilt from them (RQ's
    # scheduler does this) keep counting into the same counter.
    def __init__(self, *args: Any, round_trip_counter: RoundTripCounter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._round_trip_counter = round_trip_counter
        self._in_handshake = False

    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # redis-py runs the handshake here, right after opening each new socket.
        self._round_trip_counter._connected()
        self._in_handshake = True
        try:
            super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._in_handshake = False

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._round_trip_counter._record(handshake=self._in_handshake)
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class _CountingConnection(_CountingMixin, Connection):
    pass


class _CountingSSLConnection(_CountingMixin, SSLConnection):
    pass


def counting_redis(url: str, **kwargs: Any) -> tuple[Redis, RoundTripCounter]:
    """Build a client for a ``redis://`` or ``rediss://`` URL whose round trips are counted.

    Args:
        url: The server URL.
        **kwargs: Passed to ``Redis.from_url``.

    Returns:
        The client and its counter.
    """
    scheme = urlparse(url).scheme
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"counting_redis supports redis:// and rediss:// URLs, not {scheme}://")
    connection_class = _CountingSSLConnection if scheme == "rediss" else _CountingConnection
    counter = RoundTripCounter()
    client = Redis.from_url(url, connection_class=connection_class, round_trip_counter=counter, **kwargs)
    return client, counter
