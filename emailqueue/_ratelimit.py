"""A global send-rate limit shared through Redis by every drain and every VM worker.

Resend's rate limit is per team, shared by all its keys (2 requests/s by default; docs/PLATFORM.md
"Resend"). Senders in different processes and functions must therefore share one limiter, or
they spend their retries on 429s. This one is GCRA (a token bucket with no burst): each acquire
reserves the next free send slot, spaced ``1/rate`` apart (plus a small margin, since requests
reach Resend a few milliseconds apart from when they were granted). A 429 with ``retry-after``
pauses **all** senders: :meth:`RateLimiter.pause` pushes the shared slot forward.

One acquire is one ``EVALSHA`` round trip. The script reads and writes one key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import redis

from ._connection import redis_errors
from ._constants import KEY_PREFIX

#: Spacing margin: 5% slower than the limit, so network jitter never makes two requests land
#: inside one of Resend's one-second windows.
MARGIN: Final = 1.05

# KEYS: the limiter key. ARGV: now (s), interval (s), n wanted, horizon (s).
# Grants up to n slots whose start is within `horizon` from now; returns {granted, wait_s} where
# wait_s is how long until the first granted slot (or until the next slot if none was granted).
_ACQUIRE: Final = """
local now, interval, n, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local granted = 0
local first = tat
while granted < n and tat - now <= horizon do
  tat = tat + interval
  granted = granted + 1
end
if granted > 0 then
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
return {granted, tostring(first - now)}
"""

# KEYS: the limiter key. ARGV: now, pause (s). Push the next free slot to now + pause.
_PAUSE: Final = """
local now, pause = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now + pause then
  redis.call('SET', KEYS[1], tostring(now + pause), 'PX', math.ceil(pause * 1000) + 1000)
end
return 1
"""


def limiter_key(queue_name: str) -> str:
    return f"{KEY_PREFIX}ratelimit:{queue_name}"


class RateLimiter:
    """Shared send slots at ``rate`` per second (``None`` or 0: unlimited, costs nothing).

    Args:
        connection: the queue's Redis.
        key: the shared key (see :func:`limiter_key`).
        rate: sends per second across every process.
        clock / sleep: injected for tests.
    """

    def __init__(
        self,
        connection: redis.Redis,
        key: str,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connection = connection
        self.key = key
        self.rate = rate if rate and rate > 0 else None
        self.clock = clock
        self.sleep = sleep

    @property
    def interval(self) -> float:
        return MARGIN / self.rate if self.rate else 0.0

    def reserve(self, n: int = 1, *, horizon: float = 0.0) -> tuple[int, float]:
        """Reserve up to ``n`` send slots starting within ``horizon`` seconds.

        Returns:
            (granted, wait): how many slots are yours, and how long until the first of them
            (if none was granted: until the next free slot). Slot *i* starts at
            ``wait + i * interval``.
        """
        if self.rate is None:
            return n, 0.0
        script = self.connection.register_script(_ACQUIRE)
        with redis_errors("rate limit"):
            granted, wait = script(keys=[self.key], args=[self.clock(), self.interval, n, horizon])
        return int(granted), max(0.0, float(wait))

    def acquire(self, *, timeout: float) -> bool:
        """Wait for one slot, for at most ``timeout`` seconds. Returns False if none came in time."""
        granted, wait = self.reserve(1, horizon=timeout)
        if not granted:
            return False
        if wait > 0:
            self.sleep(wait)
        return True

    def pause(self, seconds: float) -> None:
        """Resend said 429 with ``retry-after``: no sender anywhere sends for ``seconds``."""
        if self.rate is None or seconds <= 0:
            return
        script = self.connection.register_script(_PAUSE)
        with redis_errors("rate limit"):
            script(keys=[self.key], args=[self.clock(), seconds])
