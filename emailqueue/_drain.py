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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from . import _scripts
from ._budget import fit_to_budget
from ._connection import connect_from, redis_errors
from ._constants import JOB_FUNC_PATH, META_KEY
from ._exceptions import PermanentSendError, RetryableSendError, SendError
from ._jobs import _client_for, apply_failure_policy
from ._keys import QueueKeys
from ._payload import parse_payload
from ._ratelimit import RateLimiter, limiter_key
from ._send import Outcome, Sender, failure_record, record_rejected, send
from ._settings import Settings, load_settings

log = logging.getLogger("emailqueue.drain")

Stopped = Literal["empty", "max_jobs", "time_budget"]

#: Extra seconds past a job's timeout before its execution counts as abandoned.
ABANDON_GRACE_S = 30
#: How long a job may sit in RQ's intermediate list, still queued, before it counts as left
#: behind by a dead worker. A live worker moves it on within milliseconds.
INTERMEDIATE_GRACE_S = 120
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
    sleep: Callable[[float], None] = time.sleep,
    on_progress: Callable[[DrainReport], None] | None = None,
) -> DrainReport:
    """Deliver up to ``max_jobs`` queued jobs within ``time_budget`` seconds.

    Up to ``DRAIN_CONCURRENCY`` sends are in flight at once, each in a send slot of the rate
    limit shared with every other drain and VM worker (``RESEND_RATE_LIMIT``). The drain stops
    taking jobs once a send starting now could not finish (connect plus read timeout) within the
    budget, so it returns before the function is killed.

    Args:
        max_jobs: at most this many jobs (default ``DRAIN_MAX_JOBS``); a batch chunk is one job.
        time_budget: seconds (default: ``DRAIN_TIME_BUDGET_S``, derived from maxDuration).
        connection: Redis connection; default: from ``QUEUE_REDIS_URL``.
        settings: default: read from the environment.
        client: the Resend client; default: built from settings (needs ``RESEND_API_KEY``).
        clock: monotonic clock for the budget; wall_clock: Unix time for Redis deadlines;
            sleep: waits for send slots. Tests pass their own.
        on_progress: called with the report after each job (the CLI draws a progress bar).

    Raises:
        ConfigurationError: no Redis URL or no Resend key, or a budget too short for one send
            (the Resend timeouts are scaled down to fit half the budget when they do not);
            nothing was taken off the queue.
        QueueError: Redis failed; a job taken before that is recovered by a later run.
    """
    settings = settings or load_settings()
    budget = settings.time_budget_s if time_budget is None else time_budget
    settings = fit_to_budget(settings, budget)  # a send must fit the budget, or we refuse here
    if client is None:
        client = _client_for(settings)  # fails here, before any job is claimed, if the key is missing
    conn = connection if connection is not None else connect_from(settings)
    run = _Run(
        conn=conn,
        settings=settings,
        client=client,
        limit=settings.drain_max_jobs if max_jobs is None else max_jobs,
        budget=budget,
        clock=clock,
        wall_clock=wall_clock,
        sleep=sleep,
        on_progress=on_progress,
    )
    return run.go()


class _Run:
    """The state of one drain run."""

    def __init__(
        self,
        *,
        conn: redis.Redis,
        settings: Settings,
        client: Sender,
        limit: int,
        budget: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        sleep: Callable[[float], None],
        on_progress: Callable[[DrainReport], None] | None,
    ) -> None:
        self.conn, self.settings, self.client = conn, settings, client
        self.limit, self.budget = limit, budget
        self.clock, self.wall_clock, self.sleep, self.on_progress = clock, wall_clock, sleep, on_progress
        self.queue = Queue(settings.email_queue_name, connection=conn, serializer=JSONSerializer)
        self.keys = QueueKeys.of(self.queue)
        self.limiter = RateLimiter(
            conn, limiter_key(self.queue.name), settings.resend_rate_limit, clock=wall_clock, sleep=sleep
        )
        self.report = DrainReport()
        self.started = clock()
        self.execution = uuid.uuid4().hex[:12]

    def go(self) -> DrainReport:
        keys, report = self.keys, self.report
        with redis_errors("drain"):
            now = self.wall_clock()
            # The idle probe: 3 commands, 1 round trip. A list exists only while it has items, so
            # one EXISTS covers both the queue and RQ's intermediate list.
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.exists(keys.queue, keys.intermediate)
                pipe.zcount(keys.scheduled, "-inf", now)
                pipe.zcount(keys.started, "-inf", now)
                lists, due, abandoned = pipe.execute()
            if due:
                report.promoted = self._promote(now)
            if abandoned:
                report.recovered = self._recover(now)
            if lists:
                report.recovered += self._sweep(now)
            if lists or report.promoted or report.recovered:
                with ThreadPoolExecutor(
                    self.settings.concurrency, thread_name_prefix="emailqueue-send"
                ) as pool:
                    self._work(pool)
                report.remaining = int(self.conn.llen(keys.queue))
        report.duration_ms = int((self.clock() - self.started) * 1000)
        log.info("drain: %s", report.to_dict())
        return report

    def _promote(self, now: float) -> int:
        script = self.conn.register_script(_scripts.PROMOTE)
        keys = self.keys
        moved = int(
            script(keys=[keys.scheduled, keys.queue, keys.lock], args=[now, keys.job_prefix, STEP_LIMIT])
        )
        return max(moved, 0)

    def _recover(self, now: float) -> int:
        script = self.conn.register_script(_scripts.RECOVER)
        keys = self.keys
        requeued, failed = script(
            keys=[keys.started, keys.queue, keys.failed, keys.intermediate],
            args=[now, keys.job_prefix, STEP_LIMIT],
        )
        for raw_id in failed:
            job_id = raw_id.decode()
            log.warning("job %s was abandoned by a dead worker with no attempts left: failed", job_id)
            _note_failure(
                self.queue, job_id, "abandoned", "its worker died mid-send and no attempts were left"
            )
        if requeued:
            log.warning(
                "requeued %d job(s) abandoned by a dead worker (same idempotency keys)", len(requeued)
            )
        return len(requeued) + len(failed)

    def _sweep(self, now: float) -> int:
        """Put back jobs a dead VM worker left in RQ's intermediate list (see _scripts.SWEEP)."""
        script = self.conn.register_script(_scripts.SWEEP)
        keys = self.keys
        moved = script(
            keys=[keys.intermediate, keys.queue, keys.intermediate_seen],
            args=[now, INTERMEDIATE_GRACE_S, keys.job_prefix],
        )
        if moved:
            log.warning("requeued %d job(s) a dead VM worker left in RQ's intermediate list", len(moved))
        return len(moved)

    def _work(self, pool: ThreadPoolExecutor) -> None:
        """Rounds of: claim jobs, reserve a send slot for each, send them concurrently, settle."""
        claim = self.conn.register_script(_scripts.CLAIM)
        report, settings, keys = self.report, self.settings, self.keys
        while True:
            if report.processed >= self.limit:
                report.stopped = "max_jobs"
                return
            # The last send of this round must be able to finish inside the budget, and before the
            # claim could be taken for abandoned (job timeout + grace after claiming).
            horizon = (
                min(
                    self.budget - (self.clock() - self.started),
                    settings.email_job_timeout_s + ABANDON_GRACE_S,
                )
                - settings.send_timeout_s
            )
            if horizon < 0:
                report.stopped = "time_budget"
                return
            wanted = min(settings.concurrency, self.limit - report.processed)
            now = self.wall_clock()
            stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            prefix = f"{self.execution}-{report.processed}-"
            args: list[Any] = [
                wanted,
                now,
                prefix,
                "emailqueue-drain",
                stamp,
                keys.job_prefix,
                ABANDON_GRACE_S,
            ]
            rows = [
                _Claimed(r[0].decode(), r[1], r[2], r[3])
                for r in claim(keys=[keys.queue, keys.started], args=args)
            ]
            if not rows:
                report.stopped = "empty"
                return
            # Send slots for exactly what was claimed; jobs with no slot in time go back.
            granted, wait = self.limiter.reserve(len(rows), horizon=horizon)
            if granted < len(rows):
                self._unclaim(rows[granted:])
                rows = rows[:granted]
                if not rows:
                    report.stopped = "time_budget"  # no send slot frees up in time
                    return
            interval = self.limiter.interval
            futures = [pool.submit(self._send, row, wait + i * interval) for i, row in enumerate(rows)]
            done: list[_Claimed] = []
            try:
                for row, future in zip(rows, futures, strict=True):
                    error = future.exception()
                    report.processed += 1
                    if error is None:
                        done.append(row)
                        outcome = future.result()
                        report.sent += outcome.sent
                        report.failed += len(outcome.rejected)
                    else:
                        self._fail(row, error)
                    if self.on_progress is not None:
                        self.on_progress(report)
            finally:
                self._ack(done)  # whatever else happens, what was sent is never sent again

    def _send(self, row: _Claimed, delay: float) -> Outcome:
        """Runs in the pool: wait for this job's send slot, send, record rejected recipients."""
        if delay > 0:
            self.sleep(delay)
        payload = parse_payload(_decode(row.data)["payload"])
        try:
            outcome = send(payload, self.client)
        except SendError as exc:
            if exc.status_code == 429 and exc.name == "rate_limit_exceeded":
                self.limiter.pause(exc.retry_after or 1.0)  # every sender waits, not just this one
            raise
        if outcome.rejected:
            record_rejected(self.conn, self.queue.name, payload, outcome.rejected, self.settings)
        return outcome

    def _unclaim(self, rows: list[_Claimed]) -> None:
        script = self.conn.register_script(_scripts.UNCLAIM)
        args: list[Any] = [self.keys.job_prefix]
        for row in rows:
            args += [row.job_id, row.member]
        script(keys=[self.keys.queue, self.keys.started], args=args)

    def _ack(self, rows: list[_Claimed]) -> None:
        """Done: drop the started entries and delete the jobs (``result_ttl=0``), in one round trip."""
        if not rows:
            return
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.started, *[row.member for row in rows])
            pipe.delete(*[self.keys.job_prefix + row.job_id for row in rows])
            pipe.execute()

    def _fail(self, row: _Claimed, exc: BaseException) -> None:
        """Retry or fail a job through RQ's own Job API, exactly as a VM worker would. A job hash
        RQ cannot even read (garbage fields) is failed directly, alone."""
        if isinstance(exc, SendError):
            error: SendError = exc
        else:
            log.error("unexpected error sending job %s: %r", row.job_id, exc)
            error = RetryableSendError(repr(exc)[:300], name="internal_error")
        try:
            job = Job.fetch(row.job_id, connection=self.conn, serializer=JSONSerializer)
            apply_failure_policy(job, error, self.settings)
        except redis.RedisError:
            raise  # Redis, not the job, failed: the claim stays, and a later run recovers the job
        except Exception as unreadable:
            log.error("job %s is unreadable (%r): failed", row.job_id, unreadable)
            reason = f"the job hash is unreadable: {unreadable!r}"[:300]
            self._fail_unreadable(row, PermanentSendError(reason, name="bad_payload"))
            return
        with self.conn.pipeline() as pipe:
            pipe.zrem(self.keys.started, row.member)
            if job.should_retry:
                job.retry(self.queue, pipe)
                self.report.retrying += 1
            else:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                registry = FailedJobRegistry(queue=self.queue)
                registry.add(job, ttl=job.failure_ttl, exc_string=str(error), pipeline=pipe)
                # The reason where RQ's own tools (rq info, dashboards) look for it, as a worker writes it.
                Result.create_failure(job, job.failure_ttl, exc_string=str(error), pipeline=pipe)
                self.report.failed += 1
            pipe.execute()

    def _fail_unreadable(self, row: _Claimed, error: PermanentSendError) -> None:
        """Fail a job without RQ's Job API (it cannot load it): status, our record, the registry."""
        record = {META_KEY: failure_record(None, name=error.name, message=error.message)}
        with self.conn.pipeline() as pipe:
            pipe.zrem(self.keys.started, row.member)
            pipe.hset(
                self.keys.job_prefix + row.job_id, mapping={"status": "failed", "meta": json.dumps(record)}
            )
            pipe.zadd(self.keys.failed, {row.job_id: self.wall_clock() + self.settings.email_failure_ttl_s})
            pipe.execute()
        self.report.failed += 1


def _note_failure(queue: Queue, job_id: str, name: str, message: str) -> None:
    """Record why a job failed outside a send (the status API shows it)."""
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    except Exception:  # the hash is gone: nothing to annotate
        return
    job.meta[META_KEY] = failure_record(job.meta.get(META_KEY), name=name, message=message)
    job.save_meta()  # type: ignore[no-untyped-call]


def _decode(data: bytes) -> dict[str, Any]:
    """The kwargs of a job hash's ``data`` field, or a permanent error saying why not.

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
