"""Enqueue: validate every message first, then write all jobs in one atomic Lua call.

The jobs are ordinary RQ jobs (``rq:job:<id>`` hashes built by ``rq.job.Job`` itself, pushed
on ``rq:queue:<name>``), so ``rq info`` and a plain ``rq worker`` understand them. Writing them
from one script instead of ``Queue.enqueue`` buys three things:

- a fan-out is all or nothing, in one round trip;
- the per-(event, recipient) dedup marker is set in the same atomic step as the job, so a
  crash can never leave a marker without its email (a lost email) or a job without its marker;
- a retried call (redis-py retries on a dropped connection) never pushes a job twice: ``HSET``
  reports whether the hash is new, and only a new job is pushed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now

from ._connection import connect, redis_errors
from ._constants import DEDUP_KEY_TEMPLATE, DERIVED_JOB_PREFIX, JOB_FUNC_PATH, RANDOM_JOB_PREFIX
from ._message import EmailMessage, mask_email, split_address
from ._payload import Payload, idempotency_key_for
from ._settings import Settings

# KEYS: queue key, rq:queues, then per job: job key, dedup key ('' for none)
# ARGV: dedup ttl, then per job: job id, field count, field, value, ...
# Returns the ids of the jobs that were new (already-queued or deduplicated ones are skipped).
_ENQUEUE_LUA = """
local ttl = tonumber(ARGV[1])
local queued = {}
local a = 2
for k = 3, #KEYS, 2 do
  local job_id, nfields = ARGV[a], tonumber(ARGV[a + 1])
  local fields = {unpack(ARGV, a + 2, a + 1 + nfields * 2)}
  a = a + 2 + nfields * 2
  local fresh = true
  if KEYS[k + 1] ~= '' then
    fresh = redis.call('SET', KEYS[k + 1], job_id, 'NX', 'EX', ttl)
  end
  if fresh and redis.call('HSET', KEYS[k], unpack(fields)) > 0 then
    queued[#queued + 1] = job_id
  end
end
if #queued > 0 then
  for i = 1, #queued, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(queued, i, math.min(i + 999, #queued)))
  end
  redis.call('SADD', KEYS[2], KEYS[1])
end
return queued
"""


@dataclass(frozen=True)
class PreparedJob:
    """A job ready to write: its RQ hash, and the dedup key that guards it (if any)."""

    job_id: str
    mapping: dict[str, Any]
    dedup_key: str | None


def dedup_digest(*parts: str) -> str:
    """A stable digest of the dedup identity (event id and normalized recipient)."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:40]


def normalized_recipient(address: str) -> str:
    """The part of an address that identifies a person: the lower-cased ``addr@domain``."""
    return split_address(address)[1].lower()


def prepare_job(
    message: EmailMessage,
    *,
    queue: Queue,
    settings: Settings,
    dedup: Sequence[str] | None = None,
    event_id: str | None = None,
) -> PreparedJob:
    """Build the RQ job for ``message``. ``dedup`` (identity parts) makes the job id derived and
    guarded by a marker; without it the id is random."""
    if dedup is not None:
        digest = dedup_digest(queue.name, *dedup)
        job_id = DERIVED_JOB_PREFIX + digest
        dedup_key: str | None = DEDUP_KEY_TEMPLATE.format(queue=queue.name, digest=digest)
    else:
        job_id, dedup_key = RANDOM_JOB_PREFIX + uuid.uuid4().hex, None
    payload = Payload(
        email=message.to_resend(default_from=settings.email_from),
        idempotency_key=idempotency_key_for(job_id),
        event_id=event_id,
    )
    retry = None
    if settings.email_max_attempts > 1:
        retry = Retry(max=settings.email_max_attempts - 1, interval=int(settings.email_backoff_base_s))
    job = Job.create(
        JOB_FUNC_PATH,
        kwargs={"payload": payload.to_json()},
        connection=queue.connection,
        id=job_id,
        origin=queue.name,
        status=JobStatus.QUEUED,
        # The default description is the call string: it would put addresses and bodies into
        # RQ's logs and `rq info`. Ours names the job and a masked recipient only.
        description=f"email to {', '.join(mask_email(t) for t in message.to[:3])}",
        result_ttl=0,
        failure_ttl=settings.email_failure_ttl_s,
        timeout=settings.email_job_timeout_s,
        retry=retry,
        serializer=JSONSerializer,
    )
    job.enqueued_at = now()
    return PreparedJob(job_id, job.to_dict(), dedup_key)


def write_jobs(
    connection: redis.Redis, queue: Queue, jobs: Sequence[PreparedJob], dedup_ttl: int
) -> list[str]:
    """Write ``jobs`` atomically in one round trip; return the ids actually queued."""
    if not jobs:
        return []
    keys: list[str] = [queue.key, queue.redis_queues_keys]
    args: list[Any] = [dedup_ttl]
    for job in jobs:
        keys += [Job.key_for(job.job_id), job.dedup_key or ""]
        args += [job.job_id, len(job.mapping)]
        for field, value in job.mapping.items():
            args += [field, value]
    script = connection.register_script(_ENQUEUE_LUA)
    with redis_errors("enqueue"):
        queued = script(keys=keys, args=args)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in queued]


def resolve_queue(
    settings: Settings, connection: redis.Redis | None = None, queue: Queue | None = None
) -> Queue:
    """The queue to write to: the one given, else one on ``connection``, else from settings."""
    if queue is not None:
        return queue
    conn = connection if connection is not None else connect(settings.require_redis_url())
    return Queue(settings.email_queue_name, connection=conn, serializer=JSONSerializer)
