"""Lua scripts of the immediate send (send_email(now=True), deliver_now): claim a job for the
caller, atomically, in the same shape as the drain's CLAIM (see ``_scripts``).

A claim made here is indistinguishable from a drain's: the job hash says ``started`` and the
started registry (``rq:wip:<q>``) holds ``<id>:<execution>`` scored with the moment the claim
counts as abandoned. So a caller killed mid-send is recovered by the drain's RECOVER exactly like
a drain killed mid-send: requeued with its payload, and so its Idempotency-Key.

Both scripts also take one send slot of the rate limit shared with every drain and VM worker
(``_ratelimit``: the same key, the same GCRA, the same value format), but only one that is free
within a short horizon; otherwise the job is left to the queue. Doing it inside the claim saves a
round trip. To save a command too, the slot is taken with one ``SET ... GET`` on the assumption
that the limiter is idle (its theoretical arrival time, TAT, is in the past), which is the common
case for email a person waits for; when it was not, a second ``SET`` corrects it. Inside a
script that is the same atomic read-modify-write as ``_ratelimit``'s GET then SET.
"""

from __future__ import annotations

from typing import Final

# Shared by both scripts. In: KEYS[lim] the limiter key; now, interval (0: no limit), horizon.
# Out: `wait`, seconds until the slot granted, or -1 if none is free within the horizon (the
# limiter is then left as it was).
_SLOT: Final = """
local wait = 0
if interval > 0 then
  local old = tonumber(redis.call('SET', lim, tostring(now + interval),
    'PX', math.ceil(interval * 1000) + 1000, 'GET') or '0')
  if old > now then
    if old - now <= horizon then
      wait = old - now
      redis.call('SET', lim, tostring(old + interval), 'PX', math.ceil((old + interval - now) * 1000) + 1000)
    else
      redis.call('SET', lim, tostring(old), 'PX', math.ceil((old - now) * 1000) + 1000)
      wait = -1
    end
  end
end
"""

#: Write a new job (random id) and claim it for the caller, in one step.
#: KEYS: queue, rq:queues, wip, limiter, the suppression mirror (``_suppress``).
#: ARGV: now, interval, horizon, deadline, member, started_at, worker name, job key, job id, the
#: count of address digests to check then the digests, then the job hash's field/value pairs,
#: already marked ``started`` by this claim (one HSET).
#: Returns ``{1, wait}``: written and claimed, send after ``wait`` s; ``{0, -1}``: no send slot
#: in time, written and queued like any job; ``{2, -1}``: the hash already existed and is not
#: claimed by this call (a retried call whose first run queued it): left to the queue;
#: ``{3, {digest, entry, ...}}``: a checked address is suppressed, nothing written or taken.
WRITE_AND_CLAIM: Final = (
    """
local now, interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lim = KEYS[4]
local nchecks = tonumber(ARGV[10])
if nchecks > 0 then
  local entries = redis.call('HMGET', KEYS[5], unpack(ARGV, 11, 10 + nchecks))
  local hits = {}
  for i, entry in ipairs(entries) do
    if entry then hits[#hits + 1] = ARGV[10 + i]; hits[#hits + 1] = entry end
  end
  if #hits > 0 then return {3, hits} end
end
"""
    + _SLOT
    + """
local key, id = ARGV[8], ARGV[9]
if redis.call('HSET', key, unpack(ARGV, 11 + nchecks)) == 0 then
  -- The hash existed: this call ran before and its reply was lost (redis-py retried it).
  if redis.call('ZSCORE', KEYS[3], ARGV[5]) then return {1, tostring(math.max(wait, 0))} end
  -- The first run queued it: keep it queued (a drain that took it since keeps its claim).
  if redis.call('LPOS', KEYS[1], id) then redis.call('HSET', key, 'status', 'queued') end
  return {2, '-1'}
end
if wait < 0 then
  redis.call('HSET', key, 'status', 'queued')
  redis.call('RPUSH', KEYS[1], id)
  redis.call('SADD', KEYS[2], KEYS[1])
  return {0, '-1'}
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return {1, tostring(wait)}
"""
)

#: Claim a job already waiting in the queue (deliver_now). Taken only if it is ``queued`` and
#: still in the queue list (a drain or worker that took it first wins; nothing happens twice).
#: KEYS: queue, wip, limiter. ARGV: now, interval, horizon, deadline, member, started_at, worker
#: name, job key, job id.
#: Returns ``{1, wait, data}``: claimed; ``{0}``: not waiting in the queue; ``{2, -1}``: no send
#: slot in time, left where it was.
CLAIM_QUEUED: Final = (
    """
local now, interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lim = KEYS[3]
local key, id = ARGV[8], ARGV[9]
local f = redis.call('HMGET', key, 'status', 'data')
if f[1] ~= 'queued' or not f[2] then return {0} end
-- Scanned from the tail: a job queued a moment ago is there.
if not redis.call('LPOS', KEYS[1], id, 'RANK', -1) then return {0} end
"""
    + _SLOT
    + """
if wait < 0 then return {2, '-1'} end
redis.call('LREM', KEYS[1], -1, id)
redis.call('HSET', key, 'status', 'started', 'started_at', ARGV[6], 'worker_name', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return {1, tostring(wait), f[2]}
"""
)
