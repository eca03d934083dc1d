"""What one piece of code costs in Redis: server-side commands and client round trips.

The counters are the test suite's own (``tests/helpers/redis_stats.py``), so the benchmark and
the cost tests can never disagree on what a "command" or a "round trip" is. The bench is not
part of the installed package; it runs from a checkout, where ``tests`` is importable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

try:
    from tests.helpers.redis_stats import CommandCounter, RoundTripCounter, counting_redis
except ImportError as exc:  # pragma: no cover - only outside a checkout
    raise SystemExit("run `python -m bench` from the repository root (it needs tests/helpers)") from exc

__all__ = ["Cost", "RoundTripCounter", "counting_redis", "lean_client", "measure", "stock_client"]


@dataclass
class Cost:
    """Commands the server ran (Lua-internal ones included) and round trips the client made."""

    commands: int = 0
    round_trips: int = 0
    by_command: dict[str, int] = field(default_factory=dict)


def stock_client(url: str) -> tuple[redis.Redis, RoundTripCounter]:
    """A redis-py client with its defaults, as a stock RQ user has it; connection already open."""
    conn, trips = counting_redis(url)
    conn.ping()
    return conn, trips


def lean_client(url: str) -> tuple[redis.Redis, RoundTripCounter]:
    """A client configured like ``emailqueue._connection.connect`` (RESP2, no CLIENT SETINFO)."""
    conn, trips = counting_redis(url, protocol=2, driver_info=None)
    conn.ping()
    return conn, trips


@contextmanager
def measure(observer: redis.Redis, trips: RoundTripCounter) -> Iterator[Cost]:
    """Count what runs inside the block: ``INFO commandstats`` before and after on ``observer``
    (its own INFO subtracted) and the client round trips recorded by ``trips`` (a connection's
    handshake is not a round trip of the code under test; its commands are counted server-side).
    """
    cost = Cost()
    trips.reset()
    with CommandCounter(observer) as counter:
        yield cost
    cost.round_trips = trips.round_trips
    cost.commands = counter.total
    cost.by_command = counter.by_command
