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

from dataclasses import dataclass
from typing import Any, Final

import redis

from ._keys import QueueKeys
from ._lua_common import SUPPRESSED_HITS
from ._scripts import Claimed

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
#: KEYS: queue, rq:queues, wip, limiter, the suppression mirror (:mod:`._suppress`).
#: ARGV: now, interval, horizon, deadline, member, started_at, worker name, job key, job id, the
#: count of address digests to check then the digests, then the job hash's field/value pairs,
#: already marked ``started`` by this claim (one HSET).
#: Returns ``{1, wait}``: written and claimed, send after ``wait`` s; ``{0, -1}``: no send slot
#: in time, written and queued like any job; ``{2, -1}``: the hash already existed and is not
#: claimed by this call (a retried call whose first run queued it): left to the queue;
#: ``{3, {digest, entry, ...}}``: a checked address is suppressed, nothing written or taken.
WRITE_AND_CLAIM: Final = (
    SUPPRESSED_HITS
    + """
local now, interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lim = KEYS[4]
local nchecks = tonumber(ARGV[10])
local hits = suppressed_hits(KEYS[5], 11, nchecks)
if hits then return {3, hits} end
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


@dataclass(frozen=True)
class Claim:
    """One caller's claim on one job, and the send slot it asks for.

    ``member``: its started-registry entry (``<id>:now-<random>``); ``deadline``: when the claim
    counts as abandoned (RECOVER takes it back then); ``interval``: the shared limiter's slot
    spacing in seconds (0: no limit); ``horizon``: how long a free slot may be ahead of ``now``;
    ``started_at``: RQ's timestamp of ``now``; ``worker``: the ``worker_name`` written on the job.
    """

    job_id: str
    member: str
    now: float
    interval: float
    horizon: float
    deadline: float
    started_at: str
    worker: str

    @property
    def row(self) -> Claimed:
        """The claim as the job store takes it (the same started-registry member a drain writes)."""
        return Claimed(self.job_id, self.member, b"", b"")


@dataclass(frozen=True)
class NowClaimed:
    """What a claim script did: ``state`` (the script's first reply, see each script), the wait
    in seconds before the send slot granted (-1: none), and, as the state says, the job's
    ``data`` (a queued job claimed) or ``hits`` (``[digest, entry, ...]``, suppressed)."""

    state: int
    wait: float = -1.0
    data: bytes | None = None
    hits: tuple[str, ...] = ()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NowScripts:
    """The immediate path's claim scripts of one queue, bound to a connection."""

    def __init__(self, conn: redis.Redis, keys: QueueKeys) -> None:
        self.conn, self.keys = conn, keys

    def _argv(self, claim: Claim) -> list[Any]:
        return [
            claim.now, claim.interval, claim.horizon, claim.deadline, claim.member, claim.started_at,
            claim.worker, self.keys.job_prefix + claim.job_id, claim.job_id,
        ]  # fmt: skip

    def write_and_claim(
        self,
        *,
        claim: Claim,
        fields: dict[str, Any],
        checks: tuple[str, ...],
        queues_key: str,
        limiter_key: str,
        suppression_key: str,
    ) -> NowClaimed:
        """Write the job hash ``fields`` (already ``started`` by ``claim``) and claim it, unless an
        address digest of ``checks`` is in the suppression mirror (state 3, ``hits``). State 1:
        claimed, send after ``wait``; 0: no slot in time, queued; 2: written by an earlier run of
        this call, left to the queue."""
        args = [*self._argv(claim), len(checks), *checks]
        for field, value in fields.items():
            args += [field, value]
        k = self.keys
        keys = [k.queue, queues_key, k.started, limiter_key, suppression_key]
        state, reply = self.conn.register_script(WRITE_AND_CLAIM)(keys=keys, args=args)
        if int(state) == 3:
            return NowClaimed(3, hits=tuple(_text(v) for v in reply))
        return NowClaimed(int(state), float(reply))

    def claim_queued(self, *, claim: Claim, limiter_key: str) -> NowClaimed:
        """Claim the job if it is ``queued`` and in the queue list. State 1: claimed, send after
        ``wait``, its ``data``; 0: not waiting in the queue; 2: no slot in time, left there."""
        keys = [self.keys.queue, self.keys.started, limiter_key]
        row = self.conn.register_script(CLAIM_QUEUED)(keys=keys, args=self._argv(claim))
        if int(row[0]) == 1:
            return NowClaimed(1, float(row[1]), data=row[2])
        return NowClaimed(int(row[0]))
