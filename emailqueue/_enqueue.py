"""Enqueue: validate every message first, then write all jobs in one atomic Lua call.

The jobs are ordinary RQ jobs (``rq:job:<id>`` hashes built by ``rq.job.Job`` itself, pushed
on ``rq:queue:<name>``), so ``rq info`` and a plain ``rq worker`` understand them. Writing them
from one script instead of ``Queue.enqueue`` buys three things:

- a fan-out is all or nothing, in one round trip;
- the per-(event, recipient) dedup markers are checked and set in the same atomic step as the
  jobs, so a crash can never leave a marker without its email (a lost email) or a job without
  its marker;
- a retried call (redis-py retries on a dropped connection) never queues anything twice: job ids
  guarded by markers are derived from their content, and ``HSET`` reports whether a hash is new.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now

from ._connection import connect_from, redis_errors
from ._constants import (
    DEDUP_KEY_TEMPLATE,
    DERIVED_JOB_PREFIX,
    JOB_FUNC_PATH,
    RANDOM_JOB_PREFIX,
    SUPPRESSED_KEY,
)
from ._durable import check_confirmed, durable_wait
from ._exceptions import SuppressedAddressError
from ._keys import QueueKeys
from ._message import EmailMessage
from ._payload import PACK_FIELD, Payload, idempotency_key_for, packable
from ._redact import mask_email, split_address
from ._scripts import Scripts
from ._settings import Settings

BATCH_JOB_PREFIX = "eb_"


@dataclass(frozen=True)
class PreparedJob:
    """A job ready to write: its RQ hash, the dedup markers that guard it (if any), and the
    digests of the recipients to check against the suppression mirror (none: no check)."""

    job_id: str
    mapping: dict[str, Any]
    guards: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class WriteResult:
    """``queued``: ids written now. ``taken``: guard key -> the token of the call holding it.
    ``suppressed``: address digest -> its suppression entry (then nothing was written)."""

    queued: list[str]
    taken: dict[str, str]
    suppressed: dict[str, str] = field(default_factory=dict)


def dedup_digest(*parts: str) -> str:
    """A stable digest of a dedup identity (queue, event id, normalized recipient)."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:40]


def dedup_key(digest: str, queue: Queue) -> str:
    return DEDUP_KEY_TEMPLATE.format(queue=queue.name, digest=digest)


def normalized_recipient(address: str) -> str:
    """The part of an address that identifies a person: the lower-cased ``addr@domain``."""
    return split_address(address)[1].lower()


def job_mapping(payload: Payload, job_id: str, *, queue: Queue, settings: Settings) -> dict[str, Any]:
    """The RQ job hash of one emailqueue job (queued), as ``rq.job.Job`` itself writes it."""
    retry = None
    if settings.email_max_attempts > 1:
        retry = Retry(max=settings.email_max_attempts - 1, interval=int(settings.email_backoff_base_s))
    recipients = payload.recipients
    more = f" and {len(recipients) - 1} more" if len(recipients) > 1 else ""
    job = Job.create(
        JOB_FUNC_PATH,
        kwargs={"payload": payload.to_json()},
        connection=queue.connection,
        id=job_id,
        origin=queue.name,
        status=JobStatus.QUEUED,
        # The default description is the call string: it would put addresses and bodies into
        # RQ's logs and `rq info`. Ours names a masked recipient only.
        description=f"email to {mask_email(recipients[0])}{more}",
        result_ttl=0,
        failure_ttl=settings.email_failure_ttl_s,
        timeout=settings.email_job_timeout_s,
        retry=retry,
        serializer=JSONSerializer,
    )
    job.enqueued_at = now()
    mapping = job.to_dict()
    if packable(payload):
        mapping[PACK_FIELD] = "1"  # a drain may pack it into a batch request (emailqueue._pack)
    return mapping


def prepare_single(
    message: EmailMessage,
    *,
    queue: Queue,
    settings: Settings,
    dedup: Sequence[str] | None = None,
    event_id: str | None = None,
) -> PreparedJob:
    """One email job. ``dedup`` (identity parts) derives its id and guards it with a marker;
    without it the id is random."""
    guards: tuple[str, ...] = ()
    if dedup is not None:
        digest = dedup_digest(queue.name, *dedup)
        job_id, guards = DERIVED_JOB_PREFIX + digest, (dedup_key(digest, queue),)
    else:
        job_id = RANDOM_JOB_PREFIX + uuid.uuid4().hex
    email = message.to_resend(default_from=settings.email_from)
    payload = Payload.single(email, idempotency_key_for(job_id), event_id)
    return PreparedJob(job_id, job_mapping(payload, job_id, queue=queue, settings=settings), guards)


def prepare_batch(
    messages: Sequence[tuple[str, EmailMessage]], *, queue: Queue, settings: Settings, event_id: str
) -> PreparedJob:
    """One chunk job of up to 100 personal emails (``(normalized recipient, message)`` pairs),
    guarded by each recipient's (event, recipient) marker. Its id derives from its recipients,
    so writing the same chunk twice is writing the same job."""
    digests = [dedup_digest(queue.name, "event", event_id, normalized) for normalized, _ in messages]
    job_id = BATCH_JOB_PREFIX + dedup_digest(*sorted(digests))
    payload = Payload(
        emails=[m.to_resend(default_from=settings.email_from) for _, m in messages],
        idempotency_key=idempotency_key_for(job_id),
        event_id=event_id,
        ids=[DERIVED_JOB_PREFIX + d for d in digests],
        batch=True,
    )
    mapping = job_mapping(payload, job_id, queue=queue, settings=settings)
    return PreparedJob(job_id, mapping, tuple(dedup_key(d, queue) for d in digests))


def write_jobs(
    connection: redis.Redis,
    queue: Queue,
    jobs: Sequence[PreparedJob],
    dedup_ttl: int,
    token: str = "",
    *,
    durable_timeout: float | None = None,
) -> WriteResult:
    """Write ``jobs`` atomically in one round trip, unless one of their markers is taken, or one
    of the recipients in their ``checks`` is suppressed (:mod:`._suppress`), in that same trip.

    ``token`` identifies the calling ``send_*`` call: markers it finds set to its own token were
    set by an earlier attempt of the same call (a request redis-py retried after losing the reply).
    With ``durable_timeout`` (seconds), return only once the write is on disk or on a replica
    (see :mod:`._durable`), still in one round trip.

    Raises:
        ConfigurationError: durable, and the server cannot confirm it; nothing was written.
        QueueError: Redis failed, or (durable) did not confirm the write in time.
    """
    if not jobs:
        return WriteResult([], {})
    rows = [(Job.key_for(job.job_id), job.job_id, job.guards, job.mapping) for job in jobs]
    scripts = Scripts(connection, QueueKeys.of(queue))
    token = token or uuid.uuid4().hex
    with redis_errors("enqueue", connection):
        wait = durable_wait(connection, durable_timeout) if durable_timeout is not None else ()
        checks = tuple(dict.fromkeys(c for job in jobs for c in job.checks))
        common: dict[str, Any] = dict(
            jobs=rows,
            dedup_ttl=dedup_ttl,
            token=token,
            queues_key=queue.redis_queues_keys,
            suppression_key=SUPPRESSED_KEY,
            checks=checks,
        )
        if wait:
            ok, values, reply = scripts.enqueue_then(then=wait, **common)
        else:
            ok, values = scripts.enqueue(**common)
    if wait:
        check_confirmed(wait, reply, values if ok == 1 else [], durable_timeout or 0.0)
    if ok == 1:
        return WriteResult(values, {})
    pairs = dict(zip(values[::2], values[1::2], strict=True))
    if ok == 2:
        return WriteResult([], {}, pairs)
    return WriteResult([], pairs)


def resolve_queue(
    settings: Settings, connection: redis.Redis | None = None, queue: Queue | None = None
) -> Queue:
    """The queue to write to: the one given, else one on ``connection``, else from settings."""
    if queue is not None:
        return queue
    conn = connection if connection is not None else connect_from(settings)
    return Queue(settings.email_queue_name, connection=conn, serializer=JSONSerializer)


def suppressed_error(job: PreparedJob, hits: Any) -> SuppressedAddressError:
    """The error of a write refused because recipients of ``job`` are suppressed; ``hits`` is the
    script's ``{digest, entry, ...}`` reply or a digest -> entry mapping."""
    from ._suppress import origins_of

    if not isinstance(hits, dict):
        items = [v.decode() if isinstance(v, bytes) else str(v) for v in hits]
        hits = dict(zip(items[::2], items[1::2], strict=True))
    return SuppressedAddressError(origins_of(hits, list(job.recipients)))
