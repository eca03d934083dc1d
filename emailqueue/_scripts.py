"""Lua scripts of the drain: each state change of a job is one atomic step.

They read and write RQ's own structures (``rq:queue:<q>``, ``rq:wip:<q>``, ``rq:scheduled:<q>``,
``rq:failed:<q>``, ``rq:job:<id>``) the way RQ does, so a VM ``rq worker``, ``rq info`` and
``rq requeue`` keep working beside the drain. Being atomic is what makes overlapping drains safe:
two drains can never claim, recover or promote the same job.
"""

from __future__ import annotations

from typing import Final

#: Claim up to ARGV[1] queued jobs: pop each id, skip ids whose hash is gone or that are not
#: ``queued`` (a stale or duplicate push), mark the job started, and register the execution in
#: the started registry (``<id>:<execution>``, score = when it counts as abandoned).
#: KEYS: queue, wip. ARGV: n, now, execution prefix, worker name, started_at, job key prefix, grace.
#: Returns a list of {id, execution member, data, meta}.
CLAIM: Final = """
local n, now, grace = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[7])
local out = {}
for i = 1, n * 2 do
  if #out >= n then break end
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local key = ARGV[6] .. id
  local f = redis.call('HMGET', key, 'status', 'data', 'timeout', 'meta')
  if f[2] and f[1] == 'queued' then
    local member = id .. ':' .. ARGV[3] .. i
    redis.call('ZADD', KEYS[2], now + (tonumber(f[3]) or 180) + grace, member)
    redis.call('HSET', key, 'status', 'started', 'started_at', ARGV[5], 'worker_name', ARGV[4])
    out[#out + 1] = {id, member, f[2], f[4] or ''}
  end
end
return out
"""

#: Move due retries (the ScheduledJobRegistry) back to the queue, unless an RQ scheduler holds
#: the lock: then it is doing exactly this, and doing it too could push a job twice.
#: KEYS: scheduled, queue, scheduler lock. ARGV: now, job key prefix, limit.
#: Returns the number promoted, or -1 if an RQ scheduler holds the lock.
PROMOTE: Final = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
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

#: Recover abandoned jobs: executions in the started registry whose deadline has passed belong
#: to a worker that died (a drain killed at maxDuration, a SIGKILLed VM worker). Each job is
#: requeued, keeping its payload and so its idempotency key, while it has attempts left;
#: otherwise it is failed, never silently dropped. ZREM decides which drain recovers an entry.
#: A job still ``queued`` was registered by a VM worker that died before its work horse started
#: it (RQ registers the execution, then forks): nothing was sent, so it is requeued without
#: spending an attempt, unless it is already back on the queue.
#: KEYS: wip, queue, failed, intermediate. ARGV: now, job key prefix, limit.
#: Returns {requeued ids, failed ids}.
RECOVER: Final = """
local now = tonumber(ARGV[1])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local requeued, failed = {}, {}
for _, m in ipairs(members) do
  if redis.call('ZREM', KEYS[1], m) == 1 then
    local id = string.match(m, '^(.*):[^:]*$') or m
    local key = ARGV[2] .. id
    local f = redis.call('HMGET', key, 'status', 'retries_left', 'failure_ttl')
    if f[1] == 'started' then
      local left = tonumber(f[2]) or 0
      if left > 0 then
        redis.call('HSET', key, 'status', 'queued', 'retries_left', left - 1)
        redis.call('RPUSH', KEYS[2], id)
        requeued[#requeued + 1] = id
      else
        redis.call('HSET', key, 'status', 'failed')
        redis.call('ZADD', KEYS[3], now + (tonumber(f[3]) or 31536000), id)
        failed[#failed + 1] = id
      end
    elseif f[1] == 'queued' then
      redis.call('LREM', KEYS[4], 0, id)
      if not redis.call('LPOS', KEYS[2], id) then
        redis.call('RPUSH', KEYS[2], id)
        requeued[#requeued + 1] = id
      end
    end
  end
end
return {requeued, failed}
"""

#: RQ 3's worker moves a job from the queue to ``<queue>:intermediate`` as it dequeues it, then
#: registers the execution. A worker killed between the two leaves the job only there, where
#: only a live RQ worker would find it. This puts such jobs back on the queue: a job still
#: ``queued`` (no work horse started it) that has sat in the list longer than the grace period,
#: as first seen by a drain. Jobs that are gone or started are forgotten (the started registry
#: covers those). KEYS: intermediate, queue, first-seen hash. ARGV: now, grace, job key prefix.
#: Returns the ids put back.
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

#: Give claimed jobs back (no send slot came in time): the reverse of CLAIM, at the queue's front.
#: KEYS: queue, wip. ARGV: job key prefix, then pairs of (job id, execution member).
UNCLAIM: Final = """
for i = #ARGV - 1, 2, -2 do
  if redis.call('ZREM', KEYS[2], ARGV[i + 1]) == 1 then
    redis.call('HSET', ARGV[1] .. ARGV[i], 'status', 'queued')
    redis.call('LPUSH', KEYS[1], ARGV[i])
  end
end
return 1
"""
