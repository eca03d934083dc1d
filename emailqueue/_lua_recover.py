"""The Lua scripts of recovery: PROMOTE (due retries back to the queue), RECOVER (abandoned
executions), HOLD (a job abandoned with no attempts left, resent later under its key), SWEEP
(jobs a dead worker left in RQ's intermediate list) and ORPHANS (job hashes in no list or
registry). Called through :class:`._scripts.Scripts`."""

from __future__ import annotations

from typing import Final

from ._lua_common import FORGET_EXECUTION, MARK_MAYBE_SENT

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
PROMOTE: Final = """
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
#:   spends one attempt, so a job that kills its worker every time cannot loop forever. Its
#:   record says Resend may have it (``maybe_sent``): the dead send may have been accepted.
#: - A started job with no attempts left is not settled here: its entry is pushed one lease
#:   ahead and returned as exhausted, for the store to hold on to it (HOLD) or fail it (FAIL)
#:   as ``_retry.plan_abandoned`` says.
#: - A job still ``queued`` was registered by a VM worker that died before its work horse
#:   started it (RQ registers the execution, then forks): nothing was sent, so it is requeued
#:   without spending an attempt, unless it is already back on the queue.
RECOVER: Final = (
    FORGET_EXECUTION
    + MARK_MAYBE_SENT
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
      mark_maybe_sent(key)
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

#: Hold on to a job abandoned with no attempts left while its key's window lasts (see
#: ``_retry.plan_abandoned``): one more send under its key, at ARGV[4]. ZREM of its exhausted
#: started-registry entry decides who settles it (0 if someone else did); the dead execution is
#: forgotten; the job becomes ``scheduled`` with no retries after this one (as RQ's ``Job.retry``
#: leaves it) and our record in ``meta``, in RQ's ScheduledJobRegistry, which the RQ scheduler and
#: the drain's PROMOTE read. ARGV: member, job id, meta, due (Unix seconds).
HOLD: Final = (
    FORGET_EXECUTION
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
forget_execution(ARGV[2], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'status', 'scheduled', 'retries_left', 0, 'meta', ARGV[3])
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]), ARGV[2])
return 1
"""
)

#: RQ 3's worker moves a job from the queue to ``<queue>:intermediate`` as it dequeues it, then
#: registers the execution. A worker killed between the two leaves the job only there, where
#: only a live RQ worker would find it. This puts such jobs back on the queue: a job still
#: ``queued`` that has sat in the list longer than the grace period, as first seen by a drain.
#: Jobs that are gone or started are forgotten (the started registry covers those).
SWEEP: Final = """
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
ORPHANS: Final = """
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
