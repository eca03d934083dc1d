"""What the Lua scripts of a job's state share: the field and key prefixes they name, the
fragment that forgets a dead execution and the one that checks the suppression mirror (BullMQ's
``includes/``). See :mod:`._scripts`."""

from __future__ import annotations

from typing import Final

from rq.defaults import RQ_KEY_PREFIX

from ._constants import META_KEY

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
FORGET_EXECUTION: Final = f"""
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

#: Look ``n`` address digests, ``ARGV[first]`` onwards, up in the suppression mirror (a hash,
#: :mod:`._suppress`) with one HMGET; none when ``n`` is 0. Returns ``{digest, entry, ...}`` for
#: each suppressed one, or nil when none is. Used by every script that writes a new job (ENQUEUE,
#: WRITE_AND_CLAIM), so a suppressed address is refused before anything is written.
SUPPRESSED_HITS: Final = """
local function suppressed_hits(mirror, first, n)
  if n == 0 then return nil end
  local entries = redis.call('HMGET', mirror, unpack(ARGV, first, first + n - 1))
  local hits = {}
  for i, entry in ipairs(entries) do
    if entry then hits[#hits + 1] = ARGV[first + i - 1]; hits[#hits + 1] = entry end
  end
  if #hits > 0 then return hits end
  return nil
end
"""

#: Note in a job's failure record (``meta``, :mod:`._failure`) that Resend may have its email:
#: set on a job requeued after its execution was abandoned mid-send, so that if its later sends
#: all fail, it is held on to under its key rather than failed (see ``_retry``). The meta is
#: RQ's JSON; one that does not decode to an object is left as it is.
MARK_MAYBE_SENT: Final = f"""
local function mark_maybe_sent(key)
  local ok, meta = pcall(cjson.decode, redis.call('HGET', key, 'meta') or '{{}}')
  if not ok or type(meta) ~= 'table' then return end
  local record = meta['{META_KEY}']
  if type(record) ~= 'table' then
    record = {{}}
    meta['{META_KEY}'] = record
  end
  record['maybe_sent'] = true
  redis.call('HSET', key, 'meta', cjson.encode(meta))
end
"""
