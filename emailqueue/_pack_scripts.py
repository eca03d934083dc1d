"""The Lua scripts of packing (:mod:`._pack`): claim a pack, take a due pack, each atomic.

A *pack* is up to 100 queued single emails sent in one ``POST /emails/batch``. Its composition
(the job ids, in order) and its Idempotency-Key are written to Redis by the same script that
takes the jobs off the queue, before any request, so a retry or a recovery after a crash resends
the identical batch under the same key (docs/PLATFORM.md, "Resend: batch" and "Resend: idempotency keys").

Keys of one queue ``<q>``:

- ``emailqueue:packs:<q>``: sorted set, pack id -> when it is due (its claim lapses, or its
  retry comes). A live drain's pack is due after the job timeout plus a grace period, so a pack
  whose drain died is recovered as a unit by a later drain.
- ``emailqueue:pack:<q>:<pack id>``: hash: ``key`` (the Idempotency-Key), ``ids`` (the job ids,
  comma-separated, in body order), ``body`` (the JSON array sent, written before the request),
  ``attempts``, ``error`` (the last error, for ``status``), ``since`` (Unix time of the claim,
  before any request under the key: when Resend's 24 h memory of the key begins at the earliest),
  ``unknown`` (``1`` once a send failed ambiguously: Resend may have accepted the pack),
  ``sending`` (``1`` from just before a request until it is settled: a pack taken with it set
  was abandoned by a drain that died mid-send, so it is marked ``unknown`` as it is taken).

A pack id ends in ``x<n>``, the number of emails it holds (``3f2a9c1b7d4e-0-1x100``), so
``emailqueue status`` counts the emails in packs from the packs set alone, with one ``ZRANGE``
and no read per pack (:func:`emails_in`).

A packed job's hash keeps status ``queued`` while its pack is in flight (marking each job
``started`` would cost one more command per email); it is in no RQ list, so no worker or
drain can take it twice. The pack entry is what recovery looks at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from ._constants import KEY_PREFIX

#: Claim up to ARGV[1] *units* (a unit is one request: a pack of up to ARGV[13] packable emails,
#: or one single job claimed the usual way), reading the queue in chunks (LRANGE, then one LTRIM
#: of what was used, so per email it costs one HMGET). A packable job is a queued single email
#: marked at enqueue (ARGV[10]) that was never attempted: an empty ``started_at``, no record of ours in
#: its meta, not accepted. A job that was attempted before keeps its own Idempotency-Key, so it
#: goes the single way: packing it under a new key could send it twice.
#: A pack that would hold one job only is no pack: that job is claimed the single way.
#: KEYS: queue, started registry, packs. Returns {singles, packs}: singles as CLAIM returns them,
#: packs as {pack id, idempotency key, {ids}, {data}}.
_PACK_CLAIM = """
local max_units, max_ids, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local grace, max_pack, lease = tonumber(ARGV[8]), tonumber(ARGV[13]), tonumber(ARGV[14])
local singles, packs, seen = {}, {}, {}
local units, taken, full, cur = 0, 0, false, nil
while not full and taken < max_ids do
  local ids = redis.call('LRANGE', KEYS[1], 0, math.min(max_ids - taken, max_pack) - 1)
  if #ids == 0 then break end
  local used = 0
  for i, id in ipairs(ids) do
    local key = ARGV[7] .. id
    local f = redis.call('HMGET', key, 'status', 'data', 'timeout', 'meta', ARGV[9], ARGV[10], 'started_at')
    if f[2] and f[1] == 'queued' and not seen[id] then
      local meta = f[4] or ''
      local fresh = (not f[7] or f[7] == '') and not string.find(meta, '"emailqueue"', 1, true)
      if f[6] == '1' and not f[5] and fresh then
        if cur == nil or #cur.ids >= max_pack then
          if units >= max_units then full = true; break end
          cur = {ids = {}, data = {}}
          packs[#packs + 1] = cur
          units = units + 1
        end
        cur.ids[#cur.ids + 1] = id
        cur.data[#cur.data + 1] = f[2]
        cur.timeout, cur.meta = f[3], meta
      else
        if units >= max_units then full = true; break end
        local member = id .. ':' .. ARGV[4] .. (taken + i)
        redis.call('ZADD', KEYS[2], now + (tonumber(f[3]) or 180) + grace, member)
        redis.call('HSET', key, 'status', 'started', 'started_at', ARGV[6], 'worker_name', ARGV[5])
        singles[#singles + 1] = {id, member, f[2], meta, f[5] or ''}
        units = units + 1
      end
      seen[id] = true
    end
    used = i
  end
  if used > 0 then redis.call('LTRIM', KEYS[1], used, -1) end
  taken = taken + used
  if used < #ids then break end
end
local out = {}
for n, p in ipairs(packs) do
  local pid = ARGV[12] .. n .. 'x' .. #p.ids
  if #p.ids == 1 then
    -- A pack of one is no pack: the job goes the single way, under its own key.
    local id = p.ids[1]
    local member = id .. ':' .. ARGV[4] .. 'p' .. n
    redis.call('ZADD', KEYS[2], now + (tonumber(p.timeout) or 180) + grace, member)
    redis.call('HSET', ARGV[7] .. id, 'status', 'started', 'started_at', ARGV[6], 'worker_name', ARGV[5])
    singles[#singles + 1] = {id, member, p.data[1], p.meta, ''}
  else
  redis.call('HSET', ARGV[11] .. pid, 'key', ARGV[15] .. pid, 'ids', table.concat(p.ids, ','), 'attempts', 0,
    'since', ARGV[3])
  redis.call('ZADD', KEYS[3], now + lease, pid)
  out[#out + 1] = {pid, ARGV[15] .. pid, p.ids, p.data}
  end
end
return {singles, out}
"""

#: Take up to ARGV[2] due packs (a dead drain's, or a retry whose time has come): each is pushed
#: ARGV[3] s ahead, so no other drain takes it meanwhile. An entry without its hash is dropped.
#: KEYS: packs. Returns {pack id, key, ids, body, attempts, since, unknown} each.
_PACK_TAKE = """
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, pid in ipairs(due) do
  local key = ARGV[4] .. pid
  local h = redis.call('HMGET', key, 'key', 'ids', 'body', 'attempts', 'since', 'unknown', 'sending')
  if h[1] and h[2] then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), pid)
    if h[7] == '1' then
      -- Its drain died mid-send: Resend may have accepted the pack.
      redis.call('HSET', key, 'unknown', '1')
      redis.call('HDEL', key, 'sending')
      h[6] = '1'
    end
    out[#out + 1] = {pid, h[1], h[2], h[3] or '', h[4] or '0', h[5] or '0', h[6] or ''}
  else
    redis.call('ZREM', KEYS[1], pid)
  end
end
return out
"""


#: Just before the requests of some packs: store each fresh pack's exact body (kept if one is
#: stored) and mark every pack ``sending``. A pack whose hash is gone (settled by another drain
#: after this one's lease lapsed) is left alone, so no stray hash is written.
#: KEYS: none. ARGV: pack prefix, then pack id, body ('' to keep the stored one) pairs.
_PACK_SENDING = """
for i = 2, #ARGV, 2 do
  local key = ARGV[1] .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    if ARGV[i + 1] ~= '' then redis.call('HSETNX', key, 'body', ARGV[i + 1]) end
    redis.call('HSET', key, 'sending', '1')
  end
end
return 0
"""


@dataclass(frozen=True)
class PackKeys:
    """The Redis keys of packing for one queue."""

    packs: str
    pack_prefix: str

    @classmethod
    def of(cls, queue_name: str) -> PackKeys:
        return cls(
            packs=f"{KEY_PREFIX}packs:{queue_name}",
            pack_prefix=f"{KEY_PREFIX}pack:{queue_name}:",
        )


@dataclass(frozen=True)
class PackRow:
    """A pack as claimed or taken: its id, Idempotency-Key, job ids (body order), and either the
    jobs' data (a fresh claim) or the stored body (a taken pack; empty if none was stored);
    ``since``: when it was claimed (Unix time); ``maybe_sent``: a send of it failed ambiguously."""

    pack_id: str
    key: str
    ids: list[str]
    data: list[bytes]
    body: str = ""
    attempts: int = 0
    since: float = 0.0
    maybe_sent: bool = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def emails_in(pack_id: str) -> int | None:
    """How many emails the pack holds, read from its id (``...x<n>``); None if the id says not."""
    _, sep, count = pack_id.rpartition("x")
    return int(count) if sep and count.isdigit() else None


class PackScripts:
    """The packing scripts of one queue, bound to a connection."""

    def __init__(self, conn: redis.Redis, keys: PackKeys) -> None:
        self.conn, self.keys = conn, keys

    def _run(self, lua: str, keys: list[str], args: list[Any]) -> Any:
        return self.conn.register_script(lua)(keys=keys, args=args)

    def claim(
        self,
        *,
        queue_keys: tuple[str, str],
        units: int,
        max_ids: int,
        now: float,
        execution_prefix: str,
        worker: str,
        started_at: str,
        job_prefix: str,
        grace: int,
        accepted_field: str,
        pack_field: str,
        pack_id_prefix: str,
        max_pack: int,
        lease: int,
        key_prefix: str,
    ) -> tuple[list[list[Any]], list[PackRow]]:
        args: list[Any] = [
            units, max_ids, now, execution_prefix, worker, started_at, job_prefix, grace,
            accepted_field, pack_field, self.keys.pack_prefix, pack_id_prefix, max_pack, lease, key_prefix,
        ]  # fmt: skip
        singles, packs = self._run(_PACK_CLAIM, [*queue_keys, self.keys.packs], args)
        rows = [
            PackRow(_text(p[0]), _text(p[1]), [_text(i) for i in p[2]], list(p[3]), since=now) for p in packs
        ]
        return singles, rows

    def sending(self, bodies: dict[str, str]) -> None:
        """Mark each pack in ``bodies`` (pack id -> its body, or '' to keep the stored one) as
        being sent, storing the bodies given; one round trip."""
        if bodies:
            args: list[Any] = [self.keys.pack_prefix]
            for pack_id, body in bodies.items():
                args += [pack_id, body]
            self._run(_PACK_SENDING, [], args)

    def take(self, *, now: float, limit: int, lease: int) -> list[PackRow]:
        rows = self._run(_PACK_TAKE, [self.keys.packs], [now, limit, lease, self.keys.pack_prefix])
        return [
            PackRow(
                _text(r[0]),
                _text(r[1]),
                [i for i in _text(r[2]).split(",") if i],
                [],
                body=_text(r[3]),
                attempts=int(_text(r[4]) or 0),
                since=float(_text(r[5]) or 0),
                maybe_sent=_text(r[6]) == "1",
            )
            for r in rows
        ]
