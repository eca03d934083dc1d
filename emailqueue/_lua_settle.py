"""The Lua scripts that settle a job for good or put it back: FAIL (the one way a job becomes
FAILED) and REQUEUE (failed -> queued). Called through :class:`._scripts.Scripts`."""

from __future__ import annotations

from typing import Final

from ._lua_common import FORGET_EXECUTION

#: Fail a job: the one way any job becomes FAILED. With a started-registry member, ZREM decides
#: who fails it (0 is returned if someone else settled it). The job gets status ``failed``, our
#: record in ``meta``, RQ's failure result (its tools read the reason there), a failure TTL, and
#: its entry in the failed registry. Field/value pairs after ARGV[9] (the job id) create the job
#: hash first (a rejected batch recipient becomes a failed job of its own).
FAIL: Final = (
    FORGET_EXECUTION
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
REQUEUE: Final = """
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
