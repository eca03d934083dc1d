"""The Lua scripts that change a job's state, each behind one typed wrapper with named arguments.

They read and write RQ's own structures (``rq:queue:<q>``, ``rq:wip:<q>``, ``rq:scheduled:<q>``,
``rq:failed:<q>``, ``rq:job:<id>``) the way RQ does, so a VM ``rq worker``, ``rq info`` and
``rq requeue`` keep working beside the drain. Being atomic is what makes overlapping drains safe:
two drains can never claim, recover, fail or promote the same job. Only :mod:`._store` (and,
for ENQUEUE, :func:`._enqueue.write_jobs`) calls these wrappers.

The Lua sources live by concern, one module each, this one holds their typed wrappers:

- :mod:`._lua_common`: the field and key prefixes, and the fragment that forgets an execution;
- :mod:`._lua_send`: ENQUEUE, CLAIM, UNCLAIM, ACCEPT;
- :mod:`._lua_settle`: FAIL, REQUEUE;
- :mod:`._lua_recover`: PROMOTE, RECOVER, HOLD, SWEEP, ORPHANS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from rq.defaults import RQ_KEY_PREFIX

from ._keys import QueueKeys
from ._lua_common import ACCEPTED_FIELD, EXECUTION_PREFIX, EXECUTIONS_PREFIX
from ._lua_recover import HOLD, ORPHANS, PROMOTE, RECOVER, SCHEDULER_LOCK_FLOOR_S, SCHEDULER_STALE_S, SWEEP
from ._lua_send import ACCEPT, CLAIM, ENQUEUE, UNCLAIM
from ._lua_settle import FAIL, REQUEUE
from ._pack_scripts import PackKeys

__all__ = [
    "ACCEPTED_FIELD",
    "SCHEDULER_STALE_S",
    "Claimed",
    "Orphans",
    "Recovered",
    "Scripts",
]


@dataclass(frozen=True)
class Orphans:
    """What one orphan sweep did: keys scanned (-1: not this run, the gate was set), orphans
    deleted, orphans put back on the queue."""

    scanned: int
    removed: int
    requeued: int


@dataclass(frozen=True)
class Claimed:
    """A job a drain claimed: its id, its started-registry member, its hash's data and meta, and
    whether Resend already accepted it."""

    job_id: str
    member: str
    data: bytes
    meta: bytes
    accepted: bool = False


@dataclass(frozen=True)
class Recovered:
    """What RECOVER did: ids requeued, (id, member) pairs left to fail, ids already delivered."""

    requeued: list[str]
    exhausted: list[tuple[str, str]]
    done: list[str]


def _enqueue_args(
    jobs: list[tuple[str, str, tuple[str, ...], dict[str, Any]]],
    dedup_ttl: int,
    token: str,
    checks: tuple[str, ...],
) -> list[Any]:
    args: list[Any] = [dedup_ttl, token, len(checks), *checks]
    for key, job_id, guards, mapping in jobs:
        args += [key, job_id, len(guards), *guards, len(mapping)]
        for field, value in mapping.items():
            args += [field, value]
    return args


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Scripts:
    """The scripts of one queue, bound to a connection."""

    def __init__(self, conn: redis.Redis, keys: QueueKeys) -> None:
        self.conn, self.keys = conn, keys

    def _run(self, lua: str, keys: list[str], args: list[Any]) -> Any:
        return self.conn.register_script(lua)(keys=keys, args=args)

    def enqueue(
        self,
        *,
        jobs: list[tuple[str, str, tuple[str, ...], dict[str, Any]]],
        dedup_ttl: int,
        token: str,
        queues_key: str,
        suppression_key: str,
        checks: tuple[str, ...],
    ) -> tuple[int, list[str]]:
        """Write ``jobs`` ((key, id, guards, hash mapping) each) unless a guard is taken or an
        address digest of ``checks`` is in the suppression mirror at ``suppression_key``.
        Returns (1, ids written), (0, [guard, holder token, ...]) or (2, [digest, entry, ...])."""
        args = _enqueue_args(jobs, dedup_ttl, token, checks)
        k = self.keys
        keys = [k.queue, queues_key, k.failed, suppression_key]
        ok, items = self._run(ENQUEUE, keys, args)
        return int(ok), [_text(v) for v in items]

    def enqueue_then(
        self,
        *,
        jobs: list[tuple[str, str, tuple[str, ...], dict[str, Any]]],
        dedup_ttl: int,
        token: str,
        queues_key: str,
        then: tuple[Any, ...],
        suppression_key: str,
        checks: tuple[str, ...],
    ) -> tuple[int, list[str], Any]:
        """:meth:`enqueue`, with the command ``then`` (``WAITAOF``, ``WAIT``) pipelined after it:
        one round trip. Returns what :meth:`enqueue` does, plus ``then``'s reply (an exception
        object if it failed). A server that has not cached the script yet costs one retry."""
        args = _enqueue_args(jobs, dedup_ttl, token, checks)
        k = self.keys
        keys = [k.queue, queues_key, k.failed, suppression_key]
        sha = self.conn.register_script(ENQUEUE).sha
        for by_sha in (True, False):
            with self.conn.pipeline(transaction=False) as pipe:
                if by_sha:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                else:
                    pipe.eval(ENQUEUE, len(keys), *keys, *args)
                pipe.execute_command(*then)  # type: ignore[no-untyped-call]
                written, reply = pipe.execute(raise_on_error=False)
            if by_sha and isinstance(written, redis.exceptions.NoScriptError):
                continue  # nothing ran; ``then`` waited for nothing
            if isinstance(written, Exception):
                raise written
            break
        ok, items = written
        return int(ok), [_text(v) for v in items], reply

    def claim(
        self, *, n: int, now: float, execution_prefix: str, worker: str, started_at: str, grace: int
    ) -> list[Claimed]:
        k = self.keys
        args = [n, now, execution_prefix, worker, started_at, k.job_prefix, grace, ACCEPTED_FIELD]
        rows = self._run(CLAIM, [k.queue, k.started], args)
        return [Claimed(_text(r[0]), _text(r[1]), r[2], r[3], bool(r[4])) for r in rows]

    def unclaim(self, rows: list[Claimed]) -> None:
        args: list[Any] = [self.keys.job_prefix]
        for row in rows:
            args += [row.job_id, row.member]
        self._run(UNCLAIM, [self.keys.queue, self.keys.started], args)

    def promote(self, *, now: float, limit: int, stale_s: float = SCHEDULER_STALE_S) -> int:
        """Due retries moved to the queue; 0 when a live RQ scheduler holds the lock (one
        refreshed within the last ``stale_s`` seconds)."""
        k = self.keys
        live_ms = int((SCHEDULER_LOCK_FLOOR_S - stale_s) * 1000)
        moved = self._run(PROMOTE, [k.scheduled, k.queue, k.lock], [now, k.job_prefix, limit, live_ms])
        return max(int(moved), 0)

    def recover(self, *, now: float, limit: int, lease: int) -> Recovered:
        k = self.keys
        args = [k.job_prefix, now, limit, lease, ACCEPTED_FIELD]
        requeued, exhausted, done = self._run(RECOVER, [k.started, k.queue, k.intermediate], args)
        return Recovered(
            [_text(i) for i in requeued],
            [(_text(i), _text(m)) for i, m in exhausted],
            [_text(i) for i in done],
        )

    def hold(self, *, job_id: str, member: str, meta: str, due: int) -> bool:
        k = self.keys
        keys = [k.started, k.job_prefix + job_id, k.scheduled]
        return bool(self._run(HOLD, keys, [member, job_id, meta, due]))

    def sweep(self, *, now: float, grace: int) -> list[str]:
        k = self.keys
        moved = self._run(SWEEP, [k.intermediate, k.queue, k.intermediate_seen], [now, grace, k.job_prefix])
        return [_text(i) for i in moved]

    def sweep_orphans(self, *, count: int, every_s: int, queues_key: str) -> Orphans:
        k = self.keys
        packs = PackKeys.of(k.name)
        keys = [k.orphans, k.orphans_gate, k.queue, k.intermediate, k.scheduled, k.failed, queues_key]
        keys.append(packs.packs)
        args = [k.job_prefix, count, every_s, ACCEPTED_FIELD, k.name, packs.pack_prefix]
        scanned, removed, requeued = self._run(ORPHANS, keys, args)
        return Orphans(int(scanned), int(removed), int(requeued))

    def accept(self, *, job_id: str, record: str, worker_name: str) -> bool:
        keys = [self.keys.job_prefix + job_id, EXECUTIONS_PREFIX + job_id]
        args = [ACCEPTED_FIELD, record, f"{EXECUTION_PREFIX}{job_id}:", worker_name]
        return bool(self._run(ACCEPT, keys, args))

    def fail(
        self,
        *,
        job_id: str,
        member: str,
        meta: str,
        now: float,
        ended_at: str,
        ttl: int,
        result_type: int,
        exc_string: str,
        create: list[Any] | None = None,
    ) -> bool:
        k = self.keys
        keys = [k.job_prefix + job_id, k.started, k.failed, f"{RQ_KEY_PREFIX}:results:{job_id}"]
        args: list[Any] = [member, meta, now, ended_at, ttl, result_type, "", exc_string, job_id]
        args += create or []
        return bool(self._run(FAIL, keys, args))

    def requeue(
        self, *, metas: list[tuple[str, str]], retries_left: int, enqueued_at: str, queues_key: str
    ) -> tuple[list[str], list[str], list[str]]:
        k = self.keys
        args: list[Any] = [k.job_prefix, retries_left, enqueued_at, ACCEPTED_FIELD]
        for job_id, meta in metas:
            args += [job_id, meta]
        requeued, missing, delivered = self._run(REQUEUE, [k.failed, k.queue, queues_key], args)
        return [_text(i) for i in requeued], [_text(i) for i in missing], [_text(i) for i in delivered]
