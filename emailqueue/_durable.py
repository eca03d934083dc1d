"""Durable enqueue: ``send_email(..., durable=True)`` / ``EMAIL_DURABLE=1`` returns only once Redis
has the write on disk (its AOF fsynced) or on a replica.

Redis acknowledges a write once it is in memory. With ``appendfsync everysec`` the AOF is fsynced
about once a second, so a host crash (power, kernel, VM gone; not a process kill) loses the writes
of the last second or so, including enqueues that already returned (docs/RELIABILITY.md). A
durable enqueue closes that window for the calls that ask for it:

- where the AOF is fsynced before every reply (``appendfsync always``), the enqueue's own reply
  means "on disk"; ``WAITAOF 1 0`` is pipelined after it where the server has the command (Redis
  7.2+, Valkey) to confirm the AOF is still on (it returns at once), nothing on older Redis;
- where the server has replicas and no such AOF, ``WAIT 1 <timeout>``: a replica holds the write
  (in its memory: it survives the primary's host, not a crash of both);
- elsewhere a :class:`~emailqueue.ConfigurationError`, before anything is written: no AOF and no
  replica, or an AOF fsynced ``everysec`` (or ``no``, or a policy CONFIG does not show).

Why not ``WAITAOF`` under ``everysec``, which exists for exactly this? Because the servers at hand
answer it before the fsync: valkey-server 9.1.2 replied ``[1, 0]`` to ``WAITAOF 1 0`` with the
``fdatasync`` of the write still ahead (seen with strace, and in the host-crash simulation of
docs/RELIABILITY.md, where 6 of 9 "confirmed" emails were lost). Redis fixed the same premature
wake-up in redis/redis#13793 (2025); a server without the fix cannot be told from one with it.

The wait command is pipelined after the enqueue script, so a durable enqueue is still one round
trip. What the server offers is read once (``INFO server``, ``INFO persistence``, ``INFO
replication``; ``CONFIG GET`` only where it is allowed: Upstash restricts CONFIG) and kept for
:data:`CAPABILITY_TTL_S`, so a steady stream of durable calls pays for it once a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import redis

from ._exceptions import ConfigurationError, QueueError

#: How long what a server offers is trusted before it is read again.
CAPABILITY_TTL_S = 60.0


@dataclass(frozen=True)
class Persistence:
    """What a server keeps across a crash, as ``INFO`` (and ``CONFIG GET`` if allowed) report it.

    ``fsync`` and ``rdb`` are ``"unknown"`` where CONFIG is not allowed.
    """

    server: str
    version: tuple[int, ...]
    valkey: bool
    aof: bool
    fsync: str
    rdb: str
    replicas: int
    role: str

    @property
    def has_waitaof(self) -> bool:
        """WAITAOF exists on Redis 7.2+ and on every Valkey."""
        return self.valkey or self.version >= (7, 2)

    def loss_on_crash(self) -> str:
        """What a host crash can lose with these settings; empty when nothing acknowledged is lost."""
        if self.aof and self.fsync == "always":
            return ""
        if self.aof and self.fsync == "everysec":
            return "the writes of the last 1-2 s (AOF fsynced every second)"
        if self.aof and self.fsync == "no":
            return "the writes the OS had not flushed yet, often ~30 s (appendfsync no)"
        if self.aof:
            return "up to the last 1-2 s of writes (AOF on; fsync policy unknown: CONFIG is not allowed)"
        if self.rdb not in ("", "unknown"):
            return f"every write since the last RDB snapshot (save {self.rdb}; no AOF)"
        return "everything: no AOF and no RDB snapshots"

    def wait_command(self, timeout_ms: int) -> tuple[Any, ...]:
        """The command that confirms a write is durable; ``()`` if the reply already means it.

        Raises:
            ConfigurationError: this server cannot confirm durability.
        """
        if self.aof and self.fsync == "always":
            return ("WAITAOF", 1, 0, timeout_ms) if self.has_waitaof else ()
        if self.replicas > 0:
            return ("WAIT", 1, timeout_ms)
        raise ConfigurationError(self.refusal())

    def refusal(self) -> str:
        if not self.aof:
            why = f"{self.server} keeps no AOF (appendonly no) and has no replica"
        elif self.fsync == "unknown":
            why = (
                f"{self.server} keeps an AOF but CONFIG is not allowed, so its fsync policy is unknown, "
                "and it has no replica"
            )
        else:
            why = (
                f"{self.server} fsyncs its AOF '{self.fsync}', not before each reply, and has no replica "
                "(WAITAOF is not trusted under everysec: servers without the fix of redis/redis#13793, "
                "valkey 9.1.2 among them, answer it before the fsync)"
            )
        return (
            f"durable enqueue (durable=True / EMAIL_DURABLE) cannot be confirmed: {why}, so an email "
            "could be lost on a crash of the Redis host after the call returned. Fix: set "
            "`appendonly yes` and `appendfsync always` on the server, or add a replica; or drop "
            "durable=True / set EMAIL_DURABLE=0. Nothing was queued."
        )


def read_persistence(conn: redis.Redis) -> Persistence:
    """Read what ``conn``'s server persists: INFO, then CONFIG GET where it is allowed."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.info("server")
        pipe.info("persistence")
        pipe.info("replication")
        server, persistence, replication = pipe.execute()
    valkey = "valkey_version" in server
    version_text = str(server.get("valkey_version") or server.get("redis_version") or "0")
    version = tuple(int(p) for p in version_text.split(".") if p.isdigit())
    fsync = rdb = "unknown"
    with suppress(redis.ResponseError):  # Upstash (and ACL'd users) refuse CONFIG
        config = conn.config_get("appendfsync")
        fsync = str(config.get("appendfsync", "unknown"))
        rdb = str(conn.config_get("save").get("save", "unknown"))
    return Persistence(
        server=f"{'valkey' if valkey else 'redis'} {version_text}",
        version=version,
        valkey=valkey,
        aof=str(persistence.get("aof_enabled", 0)) == "1",
        fsync=fsync,
        rdb=rdb,
        replicas=int(replication.get("connected_slaves", 0) or 0),
        role=str(replication.get("role", "unknown")),
    )


class _Cache:
    """What each server offers, per connection pool, for :data:`CAPABILITY_TTL_S`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.entries: dict[tuple[int, str], tuple[float, Persistence]] = {}

    def get(self, conn: redis.Redis) -> Persistence:
        pool = conn.connection_pool
        key = (id(pool), repr(sorted((k, str(v)) for k, v in pool.connection_kwargs.items())))
        with self.lock:
            hit = self.entries.get(key)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        found = read_persistence(conn)
        with self.lock:
            self.entries[key] = (self.clock() + CAPABILITY_TTL_S, found)
        return found

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


CAPABILITIES = _Cache()


def durable_wait(conn: redis.Redis, timeout_s: float) -> tuple[Any, ...]:
    """The wait command to pipeline after a durable write on ``conn`` (``()``: none needed).

    Raises:
        ConfigurationError: the server cannot confirm durability; nothing was written.
    """
    return CAPABILITIES.get(conn).wait_command(max(int(timeout_s * 1000), 1))


def check_confirmed(wait: tuple[Any, ...], reply: Any, queued: list[str], timeout_s: float) -> None:
    """Raise unless ``reply`` (of ``wait``) confirms the write.

    Raises:
        QueueError: the write is in Redis's memory but not confirmed on disk or on a replica.
    """
    if not wait:
        return
    if isinstance(reply, Exception):
        CAPABILITIES.clear()  # the server changed (appendonly turned off?): read it again next time
        confirmed, detail = False, f"{wait[0]} failed: {reply}"
    elif wait[0] == "WAITAOF":
        confirmed, detail = int(reply[0]) >= 1, f"WAITAOF confirmed {reply[0]} local fsync(s)"
    else:
        confirmed, detail = int(reply) >= 1, f"WAIT confirmed {reply} replica(s)"
    if not confirmed:
        ids = ", ".join(queued[:3]) + (" ..." if len(queued) > 3 else "")
        raise QueueError(
            f"durable enqueue not confirmed within EMAIL_DURABLE_TIMEOUT_S={timeout_s:g} s ({detail}). "
            f"The email is queued ({ids or 'no new job'}) but could be lost if the Redis host crashes "
            "now. Fix: check the server's disk (or replica link), raise EMAIL_DURABLE_TIMEOUT_S, or call "
            "again: a call with an idempotency_key (or an event) is never queued twice."
        )
