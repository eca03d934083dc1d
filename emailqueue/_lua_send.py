"""The Lua scripts of a job's way out: ENQUEUE writes it, CLAIM takes it for a drain, UNCLAIM
gives it back, ACCEPT records that Resend took its email. Called through :class:`._scripts.Scripts`."""

from __future__ import annotations

from typing import Final

from ._lua_common import SUPPRESSED_HITS

#: Enqueue: write jobs and their dedup markers, all or nothing (see :mod:`._enqueue`).
#: ARGV: dedup ttl, call token, suppression check count, address digests..., then per job: job
#: key, job id, guard count, guards..., field count, field, value... KEYS: queue, rq:queues,
#: failed registry, the suppression mirror (:mod:`._suppress`).
#: If a checked address is suppressed, nothing is written and {2, {digest, entry, ...}} is
#: returned (one HMGET per call, none without checks). If any guard (dedup marker) exists,
#: nothing is written and {0, {guard, its token, ...}} is returned; otherwise every guard is set
#: to the token, every new job written and pushed: {1, {new job ids}}.
ENQUEUE: Final = (
    SUPPRESSED_HITS
    + """
local ttl, token = tonumber(ARGV[1]), ARGV[2]
local nchecks = tonumber(ARGV[3])
local hits = suppressed_hits(KEYS[4], 4, nchecks)
if hits then return {2, hits} end
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
)

#: Claim up to ARGV[1] queued jobs: pop each id, skip ids whose hash is gone or that are not
#: ``queued`` (a stale or duplicate push), mark the job started, and register the execution in
#: the started registry (``<id>:<execution>``, score = when it counts as abandoned).
CLAIM: Final = """
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

#: Give claimed jobs back (no send slot came in time): the reverse of CLAIM, at the queue's front.
UNCLAIM: Final = """
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
ACCEPT: Final = """
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
