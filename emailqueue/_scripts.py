"""The Lua scripts that change a job's state, each behind one typed wrapper with named arguments.

They read and write RQ's own structures (``rq:queue:<q>``, ``rq:wip:<q>``, ``rq:scheduled:<q>``,
``rq:failed:<q>``, ``rq:job:<id>``) the way RQ does, so a VM ``rq worker``, ``rq info`` and
``rq requeue`` keep working beside the drain. Being atomic is what makes overlapping drains safe:
two drains can never claim, recover, fail or promote the same job. Only :mod:`._store` (and,
for ENQUEUE, :func:`._enqueue.write_jobs`) calls these wrappers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis
from rq.defaults import RQ_KEY_PREFIX

from ._keys import QueueKeys
from ._pack_scripts import PackKeys

#: The job hash field that records Resend's acceptance of the job's email(s). RQ never reads or
#: writes it (``Job.save`` updates only its own fields), so it survives retries and failures.
ACCEPTED_FIELD: Final = "emailqueue_accepted"
#: ``rq:execution:<job id>:<execution id>``: one execution's hash (RQ 3).
EXECUTION_PREFIX: Final = f"{RQ_KEY_PREFIX}:execution:"
#: ``rq:executions:<job id>``: the executions RQ lists for a job (RQ 3).
EXECUTIONS_PREFIX: Final = f"{RQ_KEY_PREFIX}:executions:"
#: ``rq:worker:<name>:executions``: a worker's execution index (RQ 3).
WORKER_PREFIX: Final = f"{RQ_KEY_PREFIX}:worker:"

#: Forget one dead execution everywhere RQ lists it: its hash, the job's execution registry and
#: its worker's index. RQ's success handling of a later run fetches every execution the job's
#: registry lists; a listed execution whose hash is gone makes it raise (docs/PLATFORM.md, "RQ:
#: executions"), so a recovered execution must not stay listed.
_FORGET_EXECUTION = f"""
local function forget_execution(id, member)
  local ekey = '{EXECUTION_PREFIX}' .. member
  local wname = redis.call('HGET', ekey, 'worker_name')
  redis.call('DEL', ekey)
  redis.call('ZREM', '{EXECUTIONS_PREFIX}' .. id, string.sub(member, #id + 2))
  if wname and wname ~= '' then
    redis.call('SREM', '{WORKER_PREFIX}' .. wname .. ':executions', member)
  end
end
"""

#: Enqueue: write jobs and their dedup markers, all or nothing (see :mod:`._enqueue`).
#: ARGV: dedup ttl, call token, suppression check count, address digests..., then per job: job
#: key, job id, guard count, guards..., field count, field, value... KEYS: queue, rq:queues,
#: failed registry, the suppression mirror (:mod:`._suppress`).
#: If a checked address is suppressed, nothing is written and {2, {digest, entry, ...}} is
#: returned (one HMGET per call, none without checks). If any guard (dedup marker) exists,
#: nothing is written and {0, {guard, its token, ...}} is returned; otherwise every guard is set
#: to the token, every new job written and pushed: {1, {new job ids}}.
_ENQUEUE = """
local ttl, token = tonumber(ARGV[1]), ARGV[2]
local nchecks = tonumber(ARGV[3])
if nchecks > 0 then
  local entries = redis.call('HMGET', KEYS[4], unpack(ARGV, 4, 3 + nchecks))
  local hits = {}
  for i, entry in ipairs(entries) do
    if entry then hits[#hits + 1] = ARGV[3 + i]; hits[#hits + 1] = entry end
  end
  if #hits > 0 then return {2, hits} end
end
local jobs, guards = {}, {}
local a = 4 + nchecks
while a <= #ARGV do
  local job = {key = ARGV[a], id = ARGV[a + 1], g1 = a + 3, gn = a + 2 + tonumber(ARGV[a + 2])}
  for i = job.g1, job.gn do guards[#guards + 1] = ARGV[i] end
  job.f1 = job.gn + 2
  job.fn = job.gn + 1 + tonumber(ARGV[job.gn + 1]) * 2
  a = job.fn + 1
  jobs[#jobs + 1] = job
end
local found = 0
for i = 1, #guards, 1000 do
  found = found + redis.call('EXISTS', unpack(guards, i, math.min(i + 999, #guards)))
end
if found > 0 then
  local taken = {}
  for _, g in ipairs(guards) do
    local holder = redis.call('GET', g)
    if holder then taken[#taken + 1] = g; taken[#taken + 1] = holder end
  end
  return {0, taken}
end
local queued = {}
local pending = {queued = true, scheduled = true, started = true, deferred = true}
for _, job in ipairs(jobs) do
  for i = job.g1, job.gn do redis.call('SET', ARGV[i], token, 'EX', ttl) end
  if job.gn >= job.g1 then
    -- A derived id can outlive its markers: a failed job is kept longer than a marker. A job of
    -- that id still pending is left alone; a finished or failed one is replaced by the new one.
    local status = redis.call('HGET', job.key, 'status')
    if not (status and pending[status]) then
      if status then
        redis.call('DEL', job.key)
        redis.call('ZREM', KEYS[3], job.id)
      end
      redis.call('HSET', job.key, unpack(ARGV, job.f1, job.fn))
      queued[#queued + 1] = job.id
    end
  elseif redis.call('HSET', job.key, unpack(ARGV, job.f1, job.fn)) > 0 then
    queued[#queued + 1] = job.id
  end
end
for i = 1, #queued, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(queued, i, math.min(i + 999, #queued)))
end
if #queued > 0 then redis.call('SADD', KEYS[2], KEYS[1]) end
return {1, queued}
"""

#: Claim up to ARGV[1] queued jobs: pop each id, skip ids whose hash is gone or that are not
#: ``queued`` (a stale or duplicate push), mark the job started, and register the execution in
#: the started registry (``<id>:<execution>``, score = when it counts as abandoned).
_CLAIM = """
local n, now, grace = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[7])
local out = {}
for i = 1, n * 2 do
  if #out >= n then break end
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local key = ARGV[6] .. id
  local f = redis.call('HMGET', key, 'status', 'data', 'timeout', 'meta', ARGV[8])
  if f[2] and f[1] == 'queued' then
    local member = id .. ':' .. ARGV[3] .. i
    redis.call('ZADD', KEYS[2], now + (tonumber(f[3]) or 180) + grace, member)
    redis.call('HSET', key, 'status', 'started', 'started_at', ARGV[5], 'worker_name', ARGV[4])
    out[#out + 1] = {id, member, f[2], f[4] or '', f[5] or ''}
  end
end
return out
"""

#: RQ 3's scheduler sets its lock (``rq:scheduler-lock:<queue>``, valued with the scheduler's name)
#: to expire in ``interval + 60`` s and refreshes it every ``interval`` s (1 by default) from its
#: heartbeat. So a live scheduler's lock never has less than about 60 s left; one with less has
#: missed its refreshes: its owner is dead (SIGKILL, its VM gone) or frozen.
SCHEDULER_LOCK_FLOOR_S: Final = 60
#: How long a scheduler lock may go unrefreshed before the drain takes its owner for dead and
#: promotes due retries itself (instead of waiting out the lock's 61 s). A live scheduler that
#: was merely frozen this long and wakes mid-step could push a job the drain promoted once more;
#: a duplicate push is harmless to the drain (CLAIM skips a job that is not ``queued``), and a VM
#: worker re-running it sends with the same Idempotency-Key.
SCHEDULER_STALE_S: Final = 10

#: Move due retries back to the queue, unless a live RQ scheduler holds the lock: then it is doing
#: exactly this, and doing it too could push a job twice. A lock whose TTL has run down below
#: ARGV[4] ms was not refreshed for a while: its owner is gone, so the drain promotes. Each due
#: id is moved by ZREM first, so two drains never push the same retry. Returns -1 if a live
#: scheduler holds the lock.
_PROMOTE = """
if redis.call('PTTL', KEYS[3]) > tonumber(ARGV[4]) then return -1 end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[2] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('RPUSH', KEYS[2], id)
  end
end
return #ids
"""

#: Recover abandoned executions: entries of the started registry whose deadline has passed
#: belong to a worker that died (a drain killed at maxDuration, a SIGKILLed VM worker).
#: - ZREM decides which drain recovers an entry; the dead execution is forgotten everywhere.
#: - A job Resend already accepted is done: it is deleted, never sent or failed again.
#: - A started job with attempts left is requeued (same payload, same idempotency key) and
#:   spends one attempt, so a job that kills its worker every time cannot loop forever.
#: - A started job with no attempts left is not failed here: its entry is pushed one lease
#:   ahead and returned as exhausted, for the store to fail it the one way jobs are failed.
#: - A job still ``queued`` was registered by a VM worker that died before its work horse
#:   started it (RQ registers the execution, then forks): nothing was sent, so it is requeued
#:   without spending an attempt, unless it is already back on the queue.
_RECOVER = (
    _FORGET_EXECUTION
    + """
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[4])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local requeued, exhausted, done = {}, {}, {}
for _, m in ipairs(members) do
  local id = string.match(m, '^(.*):[^:]*$') or m
  local key = ARGV[1] .. id
  local f = redis.call('HMGET', key, 'status', 'retries_left', ARGV[5])
  if f[1] == 'started' and not f[3] and (tonumber(f[2]) or 0) <= 0 then
    redis.call('ZADD', KEYS[1], now + lease, m)
    exhausted[#exhausted + 1] = {id, m}
  elseif redis.call('ZREM', KEYS[1], m) == 1 then
    forget_execution(id, m)
    if f[3] then
      redis.call('DEL', key)
      redis.call('LREM', KEYS[2], 0, id)
      done[#done + 1] = id
    elseif f[1] == 'started' then
      redis.call('HSET', key, 'status', 'queued', 'retries_left', tonumber(f[2]) - 1)
      redis.call('RPUSH', KEYS[2], id)
      requeued[#requeued + 1] = id
    elseif f[1] == 'queued' then
      redis.call('LREM', KEYS[3], 0, id)
      if not redis.call('LPOS', KEYS[2], id) then
        redis.call('RPUSH', KEYS[2], id)
        requeued[#requeued + 1] = id
      end
    end
  end
end
return {requeued, exhausted, done}
"""
)

#: RQ 3's worker moves a job from the queue to ``<queue>:intermediate`` as it dequeues it, then
#: registers the execution. A worker killed between the two leaves the job only there, where
#: only a live RQ worker would find it. This puts such jobs back on the queue: a job still
#: ``queued`` that has sat in the list longer than the grace period, as first seen by a drain.
#: Jobs that are gone or started are forgotten (the started registry covers those).
_SWEEP = """
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids = redis.call('LRANGE', KEYS[1], 0, 99)
local moved = {}
for _, id in ipairs(ids) do
  local status = redis.call('HGET', ARGV[3] .. id, 'status')
  if status == 'queued' then
    local seen = tonumber(redis.call('HGET', KEYS[3], id))
    if not seen then
      redis.call('HSET', KEYS[3], id, now)
    elseif now - seen > grace and redis.call('LREM', KEYS[1], 1, id) == 1 then
      redis.call('RPUSH', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
      moved[#moved + 1] = id
    end
  else
    if not status then redis.call('LREM', KEYS[1], 0, id) end
    redis.call('HDEL', KEYS[3], id)
  end
end
if #ids > 0 then redis.call('EXPIRE', KEYS[3], 86400) end
-- Forget ids no longer in the list, so a job that comes back later starts a fresh grace period.
local listed = {}
for _, id in ipairs(ids) do listed[id] = true end
for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not listed[id] then redis.call('HDEL', KEYS[3], id) end
end
return moved
"""

#: Give claimed jobs back (no send slot came in time): the reverse of CLAIM, at the queue's front.
_UNCLAIM = """
for i = #ARGV - 1, 2, -2 do
  if redis.call('ZREM', KEYS[2], ARGV[i + 1]) == 1 then
    redis.call('HSET', ARGV[1] .. ARGV[i], 'status', 'queued')
    redis.call('LPUSH', KEYS[1], ARGV[i])
  end
end
return 1
"""

#: Record that Resend accepted the job's email(s), and forget the job's dead executions: those
#: whose hash is gone, or that belong to another worker than the one running the job now.
#: Returns 0 if the job hash is gone (nothing to record on).
_ACCEPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for _, e in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local owner = redis.call('HGET', ARGV[3] .. e, 'worker_name')
  if not owner or (ARGV[4] ~= '' and owner ~= ARGV[4]) then
    redis.call('ZREM', KEYS[2], e)
    redis.call('DEL', ARGV[3] .. e)
  end
end
return 1
"""

#: Fail a job: the one way any job becomes FAILED. With a started-registry member, ZREM decides
#: who fails it (0 is returned if someone else settled it). The job gets status ``failed``, our
#: record in ``meta``, RQ's failure result (its tools read the reason there), a failure TTL, and
#: its entry in the failed registry. Field/value pairs after ARGV[9] (the job id) create the job
#: hash first (a rejected batch recipient becomes a failed job of its own).
_FAIL = (
    _FORGET_EXECUTION
    + """
if ARGV[1] ~= '' then
  if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
  forget_execution(ARGV[9], ARGV[1])
end
if #ARGV > 9 then redis.call('HSET', KEYS[1], unpack(ARGV, 10, #ARGV)) end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', 'failed', 'ended_at', ARGV[4], 'meta', ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('XADD', KEYS[4], 'MAXLEN', 10, '*', 'type', ARGV[6], 'worker_name', ARGV[7],
  'exc_string', ARGV[8])
redis.call('EXPIRE', KEYS[4], ttl)
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + ttl, ARGV[9])
return 1
"""
)

#: Requeue failed jobs, each in one atomic step. ZREM from the failed registry decides who
#: requeues a job, so two concurrent requeues push it once. A job Resend already accepted is
#: deleted instead: requeueing it would send it again once Resend's idempotency window closed.
#: ARGV: job key prefix, retries_left, enqueued_at, accepted field, then (id, meta) pairs.
_REQUEUE = """
local requeued, missing, delivered = {}, {}, {}
for i = 5, #ARGV, 2 do
  local id, meta = ARGV[i], ARGV[i + 1]
  local key = ARGV[1] .. id
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('EXISTS', key) == 1 then
    if redis.call('HEXISTS', key, ARGV[4]) == 1 then
      redis.call('DEL', key)
      delivered[#delivered + 1] = id
    else
      redis.call('HSET', key, 'status', 'queued', 'retries_left', ARGV[2], 'enqueued_at', ARGV[3],
        'meta', meta)
      redis.call('HDEL', key, 'started_at', 'ended_at', 'exc_info', 'worker_name')
      redis.call('PERSIST', key)
      redis.call('RPUSH', KEYS[2], id)
      requeued[#requeued + 1] = id
    end
  else
    missing[#missing + 1] = id
  end
end
if #requeued > 0 then redis.call('SADD', KEYS[3], KEYS[2]) end
return {requeued, missing, delivered}
"""


#: Sweep orphan job hashes: ``rq:job:*`` hashes of this queue with no TTL that no list or registry
#: holds. Nothing live looks like that: every writer (ours and RQ's) moves a job between lists and
#: registries in one atomic step. A late write does: a stalled connection delivering RQ's
#: ``job.save`` or status ``HSET`` after the job was acked (deleted) recreates the hash, and it
#: never expires. Bounded and rare: at most once per ARGV[3] s (the gate key), one SCAN step of
#: ARGV[2] keys, resumed where the last one stopped. An orphan that still holds an email nobody
#: accepted (data, status queued or scheduled, no acceptance record) goes back on the queue (its
#: Idempotency-Key makes a resend of one that was sent a no-op within Resend's 24 h window);
#: any other (a fragment with no data, an accepted, finished or failed job) is deleted. Started
#: jobs are left to the started registry. Jobs of other queues are never touched.
#: KEYS: sweep state (cursor, counts), gate, queue, intermediate, scheduled, failed, rq:queues.
#: ARGV: job key prefix, SCAN count, gate seconds, accepted field, queue name.
#: Returns {-1, 0, 0} when gated, else {keys scanned, removed, requeued}.
_ORPHANS = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[3])) then return {-1, 0, 0} end
local scan = redis.call('SCAN', redis.call('HGET', KEYS[1], 'cursor') or '0', 'MATCH', ARGV[1] .. '*',
  'COUNT', tonumber(ARGV[2]))
local removed, requeued = 0, 0
-- A job in an in-flight pack (emailqueue._pack) is queued but in no RQ list, on purpose: its
-- pack's key and body will send it. Requeueing it here would send it a second time, under its
-- own key, so the packs' job ids count as listed (read once, only if a candidate needs them).
local packed = nil
local function in_pack(id)
  if packed == nil then
    packed = {}
    for _, pid in ipairs(redis.call('ZRANGE', KEYS[8], 0, -1)) do
      local ids = redis.call('HGET', ARGV[6] .. pid, 'ids')
      if ids then for j in string.gmatch(ids, '[^,]+') do packed[j] = true end end
    end
  end
  return packed[id]
end
for _, key in ipairs(scan[2]) do
  if redis.call('TTL', key) == -1 and redis.call('TYPE', key)['ok'] == 'hash' then
    local f = redis.call('HMGET', key, 'status', 'origin', 'data', ARGV[4])
    local id = string.sub(key, #ARGV[1] + 1)
    local ours = f[2] == ARGV[5] or (not f[2] and not f[3])
    local listed = true
    if not ours or f[1] == 'started' then
      listed = true
    elseif f[1] == 'queued' then
      listed = redis.call('LPOS', KEYS[3], id) or redis.call('LPOS', KEYS[4], id) or in_pack(id)
    elseif f[1] == 'scheduled' then
      listed = redis.call('ZSCORE', KEYS[5], id)
    elseif f[1] == 'failed' then
      listed = redis.call('ZSCORE', KEYS[6], id)
    else
      listed = false
    end
    if not listed then
      if f[3] and not f[4] and (f[1] == 'queued' or f[1] == 'scheduled') then
        redis.call('HSET', key, 'status', 'queued')
        redis.call('RPUSH', KEYS[3], id)
        redis.call('SADD', KEYS[7], KEYS[3])
        requeued = requeued + 1
      else
        redis.call('DEL', key)
        removed = removed + 1
      end
    end
  end
end
redis.call('HSET', KEYS[1], 'cursor', scan[1])
if removed > 0 then redis.call('HINCRBY', KEYS[1], 'removed', removed) end
if requeued > 0 then redis.call('HINCRBY', KEYS[1], 'requeued', requeued) end
return {#scan[2], removed, requeued}
"""


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
    checks: tuple[str, ...] = (),
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
        suppression_key: str = "",
        checks: tuple[str, ...] = (),
    ) -> tuple[int, list[str]]:
        """Write ``jobs`` ((key, id, guards, hash mapping) each) unless a guard is taken or an
        address digest of ``checks`` is in the suppression mirror at ``suppression_key``.
        Returns (1, ids written), (0, [guard, holder token, ...]) or (2, [digest, entry, ...])."""
        args = _enqueue_args(jobs, dedup_ttl, token, checks)
        k = self.keys
        keys = [k.queue, queues_key, k.failed, suppression_key or k.queue]
        ok, items = self._run(_ENQUEUE, keys, args)
        return int(ok), [_text(v) for v in items]

    def enqueue_then(
        self,
        *,
        jobs: list[tuple[str, str, tuple[str, ...], dict[str, Any]]],
        dedup_ttl: int,
        token: str,
        queues_key: str,
        then: tuple[Any, ...],
        suppression_key: str = "",
        checks: tuple[str, ...] = (),
    ) -> tuple[int, list[str], Any]:
        """:meth:`enqueue`, with the command ``then`` (``WAITAOF``, ``WAIT``) pipelined after it:
        one round trip. Returns what :meth:`enqueue` does, plus ``then``'s reply (an exception
        object if it failed). A server that has not cached the script yet costs one retry."""
        args = _enqueue_args(jobs, dedup_ttl, token, checks)
        k = self.keys
        keys = [k.queue, queues_key, k.failed, suppression_key or k.queue]
        sha = self.conn.register_script(_ENQUEUE).sha
        for by_sha in (True, False):
            with self.conn.pipeline(transaction=False) as pipe:
                if by_sha:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                else:
                    pipe.eval(_ENQUEUE, len(keys), *keys, *args)
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
        rows = self._run(_CLAIM, [k.queue, k.started], args)
        return [Claimed(_text(r[0]), _text(r[1]), r[2], r[3], bool(r[4])) for r in rows]

    def unclaim(self, rows: list[Claimed]) -> None:
        args: list[Any] = [self.keys.job_prefix]
        for row in rows:
            args += [row.job_id, row.member]
        self._run(_UNCLAIM, [self.keys.queue, self.keys.started], args)

    def promote(self, *, now: float, limit: int, stale_s: float = SCHEDULER_STALE_S) -> int:
        """Due retries moved to the queue; 0 when a live RQ scheduler holds the lock (one
        refreshed within the last ``stale_s`` seconds)."""
        k = self.keys
        live_ms = int((SCHEDULER_LOCK_FLOOR_S - stale_s) * 1000)
        moved = self._run(_PROMOTE, [k.scheduled, k.queue, k.lock], [now, k.job_prefix, limit, live_ms])
        return max(int(moved), 0)

    def recover(self, *, now: float, limit: int, lease: int) -> Recovered:
        k = self.keys
        args = [k.job_prefix, now, limit, lease, ACCEPTED_FIELD]
        requeued, exhausted, done = self._run(_RECOVER, [k.started, k.queue, k.intermediate], args)
        return Recovered(
            [_text(i) for i in requeued],
            [(_text(i), _text(m)) for i, m in exhausted],
            [_text(i) for i in done],
        )

    def sweep(self, *, now: float, grace: int) -> list[str]:
        k = self.keys
        moved = self._run(_SWEEP, [k.intermediate, k.queue, k.intermediate_seen], [now, grace, k.job_prefix])
        return [_text(i) for i in moved]

    def sweep_orphans(self, *, count: int, every_s: int, queues_key: str) -> Orphans:
        k = self.keys
        packs = PackKeys.of(k.name)
        keys = [k.orphans, k.orphans_gate, k.queue, k.intermediate, k.scheduled, k.failed, queues_key]
        keys.append(packs.packs)
        args = [k.job_prefix, count, every_s, ACCEPTED_FIELD, k.name, packs.pack_prefix]
        scanned, removed, requeued = self._run(_ORPHANS, keys, args)
        return Orphans(int(scanned), int(removed), int(requeued))

    def accept(self, *, job_id: str, record: str, worker_name: str) -> bool:
        keys = [self.keys.job_prefix + job_id, EXECUTIONS_PREFIX + job_id]
        args = [ACCEPTED_FIELD, record, f"{EXECUTION_PREFIX}{job_id}:", worker_name]
        return bool(self._run(_ACCEPT, keys, args))

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
        return bool(self._run(_FAIL, keys, args))

    def requeue(
        self, *, metas: list[tuple[str, str]], retries_left: int, enqueued_at: str, queues_key: str
    ) -> tuple[list[str], list[str], list[str]]:
        k = self.keys
        args: list[Any] = [k.job_prefix, retries_left, enqueued_at, ACCEPTED_FIELD]
        for job_id, meta in metas:
            args += [job_id, meta]
        requeued, missing, delivered = self._run(_REQUEUE, [k.failed, k.queue, queues_key], args)
        return [_text(i) for i in requeued], [_text(i) for i in missing], [_text(i) for i in delivered]
