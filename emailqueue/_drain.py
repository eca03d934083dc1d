"""The serverless drain: deliver a bounded batch of queued emails and return in time.

Why not RQ's ``Worker.work(burst=True)``? In a web request it cannot work (signal handlers and
SIGALRM need the main thread; PLATFORM_FACTS "RQ traps"), and on an empty queue it costs 44
commands in 33 round trips, 1.9M commands a month at one run a minute. The drain instead:

1. **probes** with one pipelined round trip of 3 commands (queue length, due retries,
   abandoned executions); on an idle queue that is all it does;
2. **promotes** due retries and **recovers** abandoned jobs, each in one atomic script;
3. **claims** jobs atomically, sends them, and **acks** each (drop the started entry, delete the
   job); a failed send goes through the same retry policy as under a VM worker.

It registers no worker, sends no heartbeat, starts no thread of its own and installs no signal
handler, so it is safe in FastAPI's threadpool. Jobs stay plain RQ jobs throughout.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from . import _scripts
from ._connection import connect, redis_errors
from ._constants import JOB_FUNC_PATH, META_KEY
from ._exceptions import PermanentSendError, RetryableSendError, SendError
from ._jobs import Sender, _client_for, apply_failure_policy, send_payload
from ._settings import Settings, load_settings

log = logging.getLogger("emailqueue.drain")

Stopped = Literal["empty", "max_jobs", "time_budget"]

#: Extra seconds past a job's timeout before its execution counts as abandoned.
ABANDON_GRACE_S = 30
#: How many due retries or abandoned jobs one step moves at most.
STEP_LIMIT = 1000


@dataclass
class DrainReport:
    """What one drain run did. ``stopped`` says which bound ended it."""

    processed: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    remaining: int = 0
    duration_ms: int = 0
    stopped: Stopped = "empty"
    promoted: int = 0
    recovered: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Keys:
    queue: str
    wip: str
    scheduled: str
    failed: str
    lock: str
    job_prefix: str

    @classmethod
    def of(cls, queue: Queue) -> _Keys:
        return cls(
            queue=queue.key,
            wip=StartedJobRegistry(queue=queue).key,
            scheduled=ScheduledJobRegistry(queue=queue).key,  # type: ignore[no-untyped-call]
            failed=FailedJobRegistry(queue=queue).key,
            lock=RQScheduler.get_locking_key(queue.name),
            job_prefix=Job.key_for(""),
        )


@dataclass(frozen=True)
class _Claimed:
    job_id: str
    member: str
    data: bytes
    meta: bytes


def drain(
    *,
    max_jobs: int | None = None,
    time_budget: float | None = None,
    connection: redis.Redis | None = None,
    settings: Settings | None = None,
    client: Sender | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    on_progress: Callable[[DrainReport], None] | None = None,
) -> DrainReport:
    """Deliver up to ``max_jobs`` queued emails within ``time_budget`` seconds.

    It stops taking new jobs once the elapsed time plus one send's worst case (connect plus
    read timeout) would pass the budget, so it returns before the function is killed.

    Args:
        max_jobs: at most this many jobs (default ``DRAIN_MAX_JOBS``).
        time_budget: seconds (default: ``DRAIN_TIME_BUDGET_S``, derived from maxDuration).
        connection: Redis connection; default: from ``QUEUE_REDIS_URL``.
        settings: default: read from the environment.
        client: the Resend client; default: built from settings (needs ``RESEND_API_KEY``).
        clock: monotonic clock for the budget; wall_clock: Unix time for Redis deadlines.
            Tests pass their own.
        on_progress: called with the report after each job (the CLI draws a progress bar).

    Raises:
        ConfigurationError: no Redis URL or no Resend key; nothing was taken off the queue.
        QueueError: Redis failed; a job taken before that is recovered by a later run.
    """
    settings = settings or load_settings()
    started = clock()
    budget = settings.time_budget_s if time_budget is None else time_budget
    limit = settings.drain_max_jobs if max_jobs is None else max_jobs
    if client is None:
        client = _client_for(settings)  # fails here, before any job is claimed, if the key is missing
    conn = connection if connection is not None else connect(settings.require_redis_url())
    queue = Queue(settings.email_queue_name, connection=conn, serializer=JSONSerializer)
    keys = _Keys.of(queue)
    report = DrainReport()

    with redis_errors("drain"):
        now = wall_clock()
        with conn.pipeline(transaction=False) as pipe:
            pipe.llen(keys.queue)
            pipe.zcount(keys.scheduled, "-inf", now)
            pipe.zcount(keys.wip, "-inf", now)
            queued, due, abandoned = pipe.execute()
        if due:
            report.promoted = _promote(conn, keys, now)
        if abandoned:
            report.recovered = _recover(conn, queue, keys, now)
        if queued or report.promoted or report.recovered:
            _work(
                conn,
                queue,
                keys,
                client,
                settings,
                report,
                limit,
                budget,
                started,
                clock,
                wall_clock,
                on_progress,
            )
            report.remaining = int(conn.llen(keys.queue))
    report.duration_ms = int((clock() - started) * 1000)
    log.info("drain: %s", report.to_dict())
    return report


def _promote(conn: redis.Redis, keys: _Keys, now: float) -> int:
    script = conn.register_script(_scripts.PROMOTE)
    moved = int(script(keys=[keys.scheduled, keys.queue, keys.lock], args=[now, keys.job_prefix, STEP_LIMIT]))
    return max(moved, 0)


def _recover(conn: redis.Redis, queue: Queue, keys: _Keys, now: float) -> int:
    script = conn.register_script(_scripts.RECOVER)
    requeued, failed = script(
        keys=[keys.wip, keys.queue, keys.failed], args=[now, keys.job_prefix, STEP_LIMIT]
    )
    for raw_id in failed:
        job_id = raw_id.decode()
        log.warning("job %s was abandoned by a dead worker with no attempts left: failed", job_id)
        _note_failure(queue, job_id, "abandoned", "its worker died mid-send and no attempts were left")
    if requeued:
        log.warning("requeued %d job(s) abandoned by a dead worker (same idempotency keys)", len(requeued))
    return len(requeued) + len(failed)


def _note_failure(queue: Queue, job_id: str, name: str, message: str) -> None:
    """Record why a job failed outside a send (the status API shows it)."""
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    except Exception:  # the hash is gone: nothing to annotate
        return
    record = job.meta.get(META_KEY)
    attempts = (int(record.get("attempts", 0)) if isinstance(record, dict) else 0) + 1
    job.meta[META_KEY] = {
        "attempts": attempts,
        "error": {"name": name, "message": message, "status_code": None},
        "failed_at": datetime.now(UTC).isoformat(),
        "next_retry_in_s": None,
    }
    job.save_meta()  # type: ignore[no-untyped-call]


def _work(
    conn: redis.Redis,
    queue: Queue,
    keys: _Keys,
    client: Sender,
    settings: Settings,
    report: DrainReport,
    limit: int,
    budget: float,
    started: float,
    clock: Callable[[], float],
    wall_clock: Callable[[], float],
    on_progress: Callable[[DrainReport], None] | None,
) -> None:
    claim = conn.register_script(_scripts.CLAIM)
    execution = uuid.uuid4().hex[:12]
    report.stopped = "empty"
    while True:
        if report.processed >= limit:
            report.stopped = "max_jobs"
            return
        if clock() - started + settings.send_timeout_s > budget:
            report.stopped = "time_budget"
            return
        now = wall_clock()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        rows = claim(
            keys=[keys.queue, keys.wip],
            args=[
                1,
                now,
                f"{execution}-{report.processed}-",
                "emailqueue-drain",
                stamp,
                keys.job_prefix,
                ABANDON_GRACE_S,
            ],
        )
        if not rows:
            return
        for job_id, member, data, meta in rows:
            claimed = _Claimed(job_id.decode(), member, data, meta)
            _process(conn, queue, keys, client, settings, report, claimed)
            if on_progress is not None:
                on_progress(report)


def _decode(data: bytes) -> dict[str, Any]:
    """The payload of a job hash's ``data`` field, or a permanent error saying why not.

    Only our JSON-serialized ``deliver`` jobs run here: a pickle payload, or any other function
    on this queue, is refused and failed, never executed.
    """
    try:
        func, _instance, args, kwargs = json.loads(zlib.decompress(data))
    except Exception:
        raise PermanentSendError(
            "job data is not a JSON-serialized RQ call (pickle?)", name="bad_payload"
        ) from None
    if func != JOB_FUNC_PATH or args or not isinstance(kwargs, dict) or "payload" not in kwargs:
        raise PermanentSendError(f"not an emailqueue job ({str(func)[:80]})", name="bad_payload")
    return dict(kwargs)


def _process(
    conn: redis.Redis,
    queue: Queue,
    keys: _Keys,
    client: Sender,
    settings: Settings,
    report: DrainReport,
    claimed: _Claimed,
) -> None:
    report.processed += 1
    try:
        kwargs = _decode(claimed.data)
        send_payload(kwargs["payload"], client, settings)
    except Exception as exc:
        error = (
            exc if isinstance(exc, SendError) else RetryableSendError(repr(exc)[:300], name="internal_error")
        )
        if not isinstance(exc, SendError):
            log.exception("unexpected error sending job %s", claimed.job_id)
        _fail(conn, queue, keys, settings, report, claimed, error)
        return
    with conn.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.wip, claimed.member)
        pipe.delete(keys.job_prefix + claimed.job_id)
        pipe.execute()
    report.sent += 1


def _fail(
    conn: redis.Redis,
    queue: Queue,
    keys: _Keys,
    settings: Settings,
    report: DrainReport,
    claimed: _Claimed,
    error: SendError,
) -> None:
    """Retry or fail a job through RQ's own Job API, exactly as a VM worker would."""
    job = Job.fetch(claimed.job_id, connection=conn, serializer=JSONSerializer)
    apply_failure_policy(job, error, settings)
    with conn.pipeline() as pipe:
        pipe.zrem(keys.wip, claimed.member)
        if job.should_retry:
            job.retry(queue, pipe)
            report.retrying += 1
        else:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            FailedJobRegistry(queue=queue).add(job, ttl=job.failure_ttl, exc_string=str(error), pipeline=pipe)
            report.failed += 1
        pipe.execute()
