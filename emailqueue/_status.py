"""Look at the queue and repair it: what the admin API (and the CLI) show and do.

Everything reads RQ's own structures with plain commands on the registries' keys (LLEN, ZCARD,
ZREVRANGEBYSCORE, HMGET), in two pipelined round trips (three when a job failed without our
record, to read RQ's own reason). Packs (:mod:`._pack`) cost one command more: a pack's jobs are
in no RQ list while it is in flight or waiting for its retry, so one ``ZRANGE`` of the packs set
counts them, each pack id ending in its number of emails (:func:`._pack_scripts.emails_in`).
It never calls a registry's ``count`` or ``get_job_ids()``: those run
``StartedJobRegistry.cleanup()``, which runs failure callbacks under a SIGALRM death penalty and
so breaks off the main thread, as in FastAPI's threadpool (docs/PLATFORM.md, "RQ traps").
Recovering abandoned jobs is the drain's job anyway.

Nothing here returns a message body, an API key or the Redis URL: recipients are masked
(``j***@example.com``) and every error message is scrubbed (``_records.scrub_text``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

import redis
from rq import Queue
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.job import Job
from rq.results import Result
from rq.utils import now as rq_now
from rq.utils import utcformat, utcparse

from ._connection import redis_errors
from ._exceptions import QueueError
from ._keys import QueueKeys
from ._pack_scripts import PackKeys, emails_in
from ._records import (
    JOB_FIELDS,
    FailedJob,
    WorkerInfo,
    exc_string_of,
    needs_rq_reason,
    read_failed_job,
    read_worker,
    text_of,
    worker_name,
)
from ._settings import Settings
from ._store import JobStore

#: Ids requeued per script call: each call blocks Redis while it runs, so keep it short.
REQUEUE_BATCH: Final = 500
#: Why a requeue left jobs failed (``RequeueReport.needs_force``), in one line.
NEEDS_FORCE_REASON: Final = (
    "outcome unknown: Resend may have delivered these emails and no longer knows their "
    "Idempotency-Key, so a requeue may send them twice; check Resend (dashboard or GET /emails), "
    "then requeue them with force to send them anyway"
)


@dataclass(frozen=True)
class QueueStatus:
    """Counts of the queue and its registries, workers, and the most recent failures."""

    queue: str
    queued: int
    started: int
    scheduled: int
    failed: int
    oldest_queued_age_s: float | None
    workers: list[WorkerInfo]
    recent_failed: list[FailedJob]
    #: Job hashes the drains' orphan sweep found in no registry and with no TTL (left by a late
    #: write after the job was done), since the queue began: deleted, and put back on the queue.
    orphans_removed: int = 0
    orphans_requeued: int = 0
    #: Packs (queued single emails sent together in one batch request) in flight or waiting for
    #: their retry, and the emails in them: those jobs are in none of the counts above.
    packs: int = 0
    in_packs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RequeueReport:
    """Which failed jobs went back on the queue, which ids were not failed jobs, which were
    deleted instead because Resend had accepted them (requeueing would send them again), and
    which were left failed because their outcome is unknown (``needs_force``, with the reason in
    ``needs_force_reason``: requeueing them may send them twice)."""

    requeued: list[str]
    not_found: list[str]
    already_delivered: list[str] = field(default_factory=list)
    needs_force: list[str] = field(default_factory=list)
    needs_force_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Health:
    """Whether Redis answers, and how fast. ``error`` is short and names no host or password."""

    ok: bool
    latency_ms: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def queue_status(
    connection: redis.Redis, settings: Settings, *, failed_limit: int = 20, now: float | None = None
) -> QueueStatus:
    """Counts, workers and the ``failed_limit`` most recent failures of the email queue.

    Args:
        connection: the Redis connection.
        settings: the queue name comes from here.
        failed_limit: how many failed jobs to list, most recent first (0 for none).
        now: Unix time to measure ages and failure TTLs against; default: the clock.

    Returns:
        A :class:`QueueStatus`; failed jobs past their failure TTL are not counted.

    Raises:
        QueueError: Redis failed.
    """
    keys = QueueKeys.of(Queue(settings.email_queue_name, connection=connection))
    now = time.time() if now is None else now
    with redis_errors("queue status"), connection.pipeline(transaction=False) as pipe:
        counts, oldest, failed_ids, worker_keys = _counts(pipe, keys, now, max(failed_limit, 0))
        # Second round trip: the details of what the first one found.
        age, job_fields, worker_replies = _details(pipe, oldest, failed_ids, worker_keys, now)
    reasons = _rq_reasons(connection, [i for i, f in job_fields.items() if needs_rq_reason(f)])
    jobs = [job for i, f in job_fields.items() if (job := read_failed_job(i, f, reasons.get(i, "")))]
    jobs.sort(key=lambda job: job.failed_at or "", reverse=True)  # registry scores are whole seconds
    workers = [
        w
        for i, key in enumerate(worker_keys)
        if (w := read_worker(key, worker_replies[2 * i], worker_replies[2 * i + 1]))
    ]
    return QueueStatus(
        queue=keys.name, **counts, oldest_queued_age_s=age, workers=workers, recent_failed=jobs
    )


def _counts(
    pipe: Any, keys: QueueKeys, now: float, limit: int
) -> tuple[dict[str, int], Any, list[str], list[str]]:
    """First round trip: the counts, the oldest queued id, the failed ids to show, the workers."""
    pipe.llen(keys.queue)
    pipe.zcard(keys.started)
    pipe.zcard(keys.scheduled)
    pipe.zcount(keys.failed, now, "+inf")
    pipe.lindex(keys.queue, 0)
    pipe.smembers(keys.workers)
    pipe.hmget(keys.orphans, "removed", "requeued")
    pipe.zrange(PackKeys.of(keys.name).packs, 0, -1)
    if limit:
        pipe.zrevrangebyscore(keys.failed, "+inf", now, start=0, num=limit)
    queued, started, scheduled, failed, oldest, worker_keys, orphans, packs, *rest = pipe.execute()
    counts = {
        "queued": int(queued),
        "started": int(started),
        "scheduled": int(scheduled),
        "failed": int(failed),
        "orphans_removed": int(orphans[0] or 0),
        "orphans_requeued": int(orphans[1] or 0),
        "packs": len(packs),
        "in_packs": sum(emails_in(text_of(p)) or 0 for p in packs),
    }
    failed_ids = [text_of(v) for v in (rest[0] if rest else [])]
    return counts, oldest, failed_ids, sorted(text_of(v) for v in worker_keys)


def _details(
    pipe: Any, oldest: Any, failed_ids: list[str], worker_keys: list[str], now: float
) -> tuple[float | None, dict[str, Any], list[Any]]:
    """Second round trip: the oldest job's age, the failed jobs' fields, the workers' fields."""
    if not (oldest or failed_ids or worker_keys):
        return None, {}, []
    if oldest:
        pipe.hget(Job.key_for(text_of(oldest)), "enqueued_at")
    for job_id in failed_ids:
        pipe.hmget(Job.key_for(job_id), *JOB_FIELDS)
    for key in worker_keys:
        pipe.hmget(key, "state", "last_heartbeat")
        pipe.smembers(WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name(key)))
    replies = pipe.execute()
    age = _age(replies.pop(0), now) if oldest else None
    return age, dict(zip(failed_ids, replies, strict=False)), replies[len(failed_ids) :]


def requeue_failed(
    connection: redis.Redis, settings: Settings, job_ids: list[str] | None = None, *, force: bool = False
) -> RequeueReport:
    """Put failed jobs back on the queue, all of them or the ones named.

    Each job keeps its payload and so its idempotency key (Resend still dedupes a send that did
    go through), gets ``EMAIL_MAX_ATTEMPTS - 1`` retries again, and its error is cleared from
    ``job.meta["emailqueue"]``, where ``requeued`` and ``past_attempts`` keep count. Each job is
    requeued atomically: of two concurrent requeues, one wins and the job is pushed once. A job
    whose acceptance by Resend is recorded is deleted instead (``already_delivered``): it was
    sent, and requeueing it would send it again once Resend's idempotency window closed.

    A job that failed as ``outcome_unknown`` is left failed and listed in ``needs_force``: Resend
    may have delivered it, and its key's 24 h window has closed, so a resend would be a new email
    to Resend, maybe a second one to the recipient. Check Resend first; ``force=True`` requeues
    such jobs too, to be sent again.

    Args:
        connection: the Redis connection.
        settings: queue name and the number of attempts.
        job_ids: the jobs to requeue; ``None`` for every failed job.
        force: requeue ``outcome_unknown`` jobs as well.

    Returns:
        A :class:`RequeueReport`. Ids that are not in the failed registry are in ``not_found``.

    Raises:
        QueueError: Redis failed; jobs requeued before the failure stay requeued.
    """
    store = JobStore(connection, settings.email_queue_name, settings)
    report = RequeueReport([], [], [])
    with redis_errors("requeue"):
        if job_ids is None:
            ids = [text_of(v) for v in connection.zrange(store.keys.failed, 0, -1)]
        else:
            ids = list(dict.fromkeys(job_ids))
        for start in range(0, len(ids), REQUEUE_BATCH):
            done, missing, delivered, unknown = store.requeue(
                ids[start : start + REQUEUE_BATCH], enqueued_at=utcformat(rq_now()), force=force
            )
            report.requeued.extend(done)
            report.not_found.extend(missing)
            report.already_delivered.extend(delivered)
            report.needs_force.extend(unknown)
    if report.needs_force:
        return replace(report, needs_force_reason=NEEDS_FORCE_REASON)
    return report


def health(connection: redis.Redis, *, clock: Callable[[], float] = time.perf_counter) -> Health:
    """PING Redis. Never raises: a failure is ``ok=False`` with a short reason.

    The reason names the kind of failure only (no host, URL or password): the health route is
    public.
    """
    started = clock()
    try:
        with redis_errors("health check"):
            connection.ping()
    except QueueError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "error"
        return Health(ok=False, latency_ms=None, error=f"Redis is unavailable ({cause})")
    return Health(ok=True, latency_ms=round((clock() - started) * 1000, 2))


def _rq_reasons(connection: redis.Redis, job_ids: list[str]) -> dict[str, str]:
    """RQ's tracebacks of jobs it failed itself: a third round trip, only when there are any."""
    if not job_ids:
        return {}
    with redis_errors("queue status"), connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.xrevrange(Result.get_key(job_id), "+", "-", count=1)  # type: ignore[no-untyped-call]
        return {job_id: exc_string_of(reply) for job_id, reply in zip(job_ids, pipe.execute(), strict=True)}


def _age(enqueued_at: Any, now: float) -> float | None:
    try:
        return round(max(now - utcparse(text_of(enqueued_at)).timestamp(), 0.0), 3)
    except ValueError:
        return None  # the oldest id's hash is gone (a stale push): no age to show
