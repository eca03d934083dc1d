"""The serverless drain: deliver a bounded batch of queued emails and return in time.

Why not RQ's ``Worker.work(burst=True)``? In a web request it cannot work (signal handlers and
SIGALRM need the main thread; docs/PLATFORM.md "RQ traps"), and on an empty queue it costs 44
commands in 33 round trips, 1.9M commands a month at one run a minute. The drain instead:

1. **probes** with one pipelined round trip of 3 commands (queue length, due retries,
   abandoned executions); on an idle queue that is all it does;
2. **promotes** due retries and **recovers** abandoned jobs, each in one atomic script;
3. **claims** jobs atomically, sends them, and **acks** each (drop the started entry, delete the
   job); a failed send goes through the same retry policy as under a VM worker. With
   ``EMAIL_PACK`` on (the default), queued single emails are packed up to 100 into one batch
   request, exactly once (:mod:`._pack`).

It registers no worker, sends no heartbeat, starts no thread of its own and installs no signal
handler, so it is safe in FastAPI's threadpool. Jobs stay plain RQ jobs throughout.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis

from ._budget import fit_to_budget
from ._connection import connect_from, redis_errors
from ._events import SentEmail, sent_emails
from ._exceptions import RetryableSendError, SendError
from ._jobs import RUNTIME
from ._pack import PACK_SIZE, Packer, Prepared
from ._pack_scripts import PackRow
from ._payload import decode_job_data, parse_payload
from ._ratelimit import RateLimiter, limiter_key
from ._retry import key_forgotten, outcome_unknown
from ._send import Outcome, Sender, send
from ._settings import Settings, load_settings
from ._store import Claimed, JobStore

log = logging.getLogger("emailqueue.drain")

Stopped = Literal["empty", "max_jobs", "time_budget"]

#: Extra seconds past a job's timeout before its execution counts as abandoned.
ABANDON_GRACE_S = 30
#: How long a job may sit in RQ's intermediate list, still queued, before it counts as left
#: behind by a dead worker. A live worker moves it on within milliseconds.
INTERMEDIATE_GRACE_S = 120
#: How many due retries or abandoned jobs one step moves at most.
STEP_LIMIT = 1000
#: The orphan sweep: at most one step per this many seconds, on runs that did work (so an idle
#: run stays at its 3 commands), each looking at this many keys.
ORPHAN_SWEEP_EVERY_S = 600
ORPHAN_SWEEP_COUNT = 200


@dataclass
class DrainReport:
    """What one drain run did. ``stopped`` says which bound ended it. ``processed`` counts jobs
    (a fan-out chunk is one), ``requests`` the sends to Resend (what ``max_jobs`` bounds: a pack
    of up to 100 queued single emails is one); ``packs`` and ``largest_pack`` are the packs sent
    and the most emails one of them carried."""

    processed: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    remaining: int = 0
    duration_ms: int = 0
    stopped: Stopped = "empty"
    promoted: int = 0
    recovered: int = 0
    orphans: int = 0
    requests: int = 0
    packs: int = 0
    largest_pack: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        max_jobs: at most this many requests to Resend (default ``DRAIN_MAX_JOBS``): a single
            job, a fan-out chunk, or a pack of up to 100 queued single emails is one.
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
        client = RUNTIME.client_for(settings)  # fails here, before any job is claimed, if the key is missing
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
        self.store = JobStore(conn, settings.email_queue_name, settings, wall_clock=wall_clock)
        self.keys = self.store.keys
        self.limiter = RateLimiter(
            conn, limiter_key(self.keys.name), settings.resend_rate_limit, clock=wall_clock, sleep=sleep
        )
        self.report = DrainReport()
        self.started = clock()
        self.execution = uuid.uuid4().hex[:12]
        self.packs_exist = False
        self.packer = Packer(self.store, client, settings, self.limiter, wall_clock=wall_clock)

    def go(self) -> DrainReport:
        keys, report = self.keys, self.report
        with redis_errors("drain"):
            now = self.wall_clock()
            # The idle probe: 3 commands, 1 round trip. A list exists only while it has items, so
            # one EXISTS covers both the queue and RQ's intermediate list.
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.exists(keys.queue, keys.intermediate, self.store.pack_keys.packs)
                pipe.zcount(keys.scheduled, "-inf", now)
                pipe.zcount(keys.started, "-inf", now)
                lists, due, abandoned = pipe.execute()
            self.packs_exist = bool(lists)  # the pack set may be among them: look for due packs
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
                orphans = self.store.sweep_orphans(count=ORPHAN_SWEEP_COUNT, every_s=ORPHAN_SWEEP_EVERY_S)
                report.orphans = orphans.removed + orphans.requeued
                report.remaining = int(self.conn.llen(keys.queue))
        report.duration_ms = int((self.clock() - self.started) * 1000)
        log.info("drain: %s", report.to_dict())
        return report

    def _promote(self, now: float) -> int:
        return self.store.promote(now=now, limit=STEP_LIMIT)

    def _recover(self, now: float) -> int:
        recovered = self.store.recover(now=now, limit=STEP_LIMIT, lease=ABANDON_GRACE_S)
        return len(recovered.requeued) + len(recovered.exhausted) + len(recovered.done)

    def _sweep(self, now: float) -> int:
        """Put back jobs a dead VM worker left in RQ's intermediate list (see _scripts.SWEEP)."""
        moved = self.store.sweep(now=now, grace=INTERMEDIATE_GRACE_S)
        if moved:
            log.warning("requeued %d job(s) a dead VM worker left in RQ's intermediate list", len(moved))
        return len(moved)

    def _work(self, pool: ThreadPoolExecutor) -> None:
        """Rounds of: take due packs, claim jobs (packed, or one by one), reserve a send slot for
        each request, send them concurrently, settle. A request (a pack or a single job) counts
        as one job against ``max_jobs``."""
        report, settings = self.report, self.settings
        while True:
            if self.report.requests >= self.limit:
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
            wanted = min(settings.concurrency, self.limit - self.report.requests)
            packs, rows = self._claim(wanted)
            if not packs and not rows:
                report.stopped = "empty"
                return
            # Send slots for exactly what was claimed; what got no slot in time goes back.
            granted, wait = self.limiter.reserve(len(packs) + len(rows), horizon=horizon)
            if granted < len(packs) + len(rows):
                self.store.pack_release(packs[granted:], now=self.wall_clock())
                self.store.unclaim(rows[max(granted - len(packs), 0) :])
                packs, rows = packs[:granted], rows[: max(granted - len(packs), 0)]
                if not packs and not rows:
                    report.stopped = "time_budget"  # no send slot frees up in time
                    return
            interval, reserved_at = self.limiter.interval, self.clock()
            ready = self.packer.prepare(packs)
            # Each send waits for its slot measured from the reservation, not from when its
            # thread starts (building a pack's body takes time the slots must not lose).
            pack_futures = [
                pool.submit(self._send_pack, pack, reserved_at + wait + i * interval)
                for i, pack in enumerate(ready)
            ]
            lag = self.clock() - reserved_at if ready else 0.0  # the time spent building packs
            futures = [
                pool.submit(self._send, row, wait + (len(ready) + i) * interval - lag)
                for i, row in enumerate(rows)
            ]
            self._settle_round(
                list(zip(ready, pack_futures, strict=True)), list(zip(rows, futures, strict=True))
            )

    def _settle_round(
        self,
        packs: list[tuple[Prepared, Future[Outcome]]],
        singles: list[tuple[Claimed, Future[tuple[Outcome, list[SentEmail]]]]],
    ) -> None:
        """Settle a round's sends as they finish, packs first; whatever else happens, the single
        jobs that were sent are acked, so what was sent is never sent again."""
        report = self.report
        done: list[Claimed] = []
        sent: list[SentEmail] = []
        try:
            for pack, pack_future in packs:
                self._settle_pack(pack, pack_future)
            for row, future in singles:
                error = future.exception()
                report.processed += 1
                report.requests += 1
                if error is None:
                    done.append(row)
                    outcome, emails = future.result()
                    sent += emails
                    report.sent += outcome.sent
                    report.failed += len(outcome.rejected)
                else:
                    self._fail(row, error)
                if self.on_progress is not None:
                    self.on_progress(report)
        finally:
            self.store.ack(done, sent)

    def _claim(self, wanted: int) -> tuple[list[PackRow], list[Claimed]]:
        """Due packs first (a dead drain's, or a retry's), then queued jobs: packed when packing
        is on, else one by one."""
        now = self.wall_clock()
        lease = self.settings.email_job_timeout_s + ABANDON_GRACE_S
        packs = self.store.pack_take(now=now, limit=wanted, lease=lease) if self.packs_exist else []
        wanted -= len(packs)
        if wanted <= 0:
            return packs, []
        prefix = f"{self.execution}-{self.report.requests}-"
        if not self.settings.email_pack:
            rows = self.store.claim(
                n=wanted, now=now, execution_prefix=prefix, worker="emailqueue-drain", grace=ABANDON_GRACE_S
            )
            return packs, rows
        rows, fresh = self.store.pack_claim(
            units=wanted,
            now=now,
            execution_prefix=prefix,
            worker="emailqueue-drain",
            grace=ABANDON_GRACE_S,
            lease=lease,
            size=PACK_SIZE,
        )
        if fresh:
            self.packs_exist = True
        return packs + fresh, rows

    def _send_pack(self, pack: Prepared, slot_at: float) -> Outcome:
        """Runs in the pool: wait for the pack's send slot (``slot_at`` on ``clock``), send it."""
        return self.packer.send(pack, slot_at - self.clock(), self.sleep)

    def _settle_pack(self, pack: Prepared, future: Future[Outcome]) -> None:
        report = self.report
        error = future.exception()
        settled = self.packer.settle(pack, None if error else future.result(), error)
        self.report.requests += 1
        report.processed += len(pack.row.ids)
        report.sent += settled.sent
        report.failed += settled.failed
        report.retrying += len(pack.row.ids) if settled.retrying else 0
        if settled.sent:
            report.packs += 1
            report.largest_pack = max(report.largest_pack, len(pack.ids))
        if self.on_progress is not None:
            self.on_progress(report)

    def _send(self, row: Claimed, delay: float) -> tuple[Outcome, list[SentEmail]]:
        """Runs in the pool: wait for this job's send slot, send, record rejected recipients.
        Returns the outcome and the emails Resend accepted (for their lifecycle)."""
        if row.accepted:
            log.warning("job %s: Resend already accepted it; not sent again", row.job_id)
            return Outcome(sent=0), []
        if delay > 0:
            self.sleep(delay)
        if key_forgotten(row.meta, lambda: self.store.created_at(row.job_id), self.wall_clock()):
            raise outcome_unknown(None)  # Resend may have forgotten its key: never send it again
        payload = parse_payload(decode_job_data(row.data)["payload"])
        # The slot was reserved for this job; a 429 still pauses every sender sharing the limit.
        outcome = send(payload, self.client, limiter=self.limiter, slot_reserved=True)
        if outcome.rejected:
            self.store.record_rejected(payload, outcome.rejected)
        return outcome, sent_emails(row.job_id, payload, outcome.resend_ids)

    def _fail(self, row: Claimed, exc: BaseException) -> None:
        """Retry or fail a job through the store, as a VM worker would. A job hash RQ cannot even
        read (garbage fields) is failed with our record only."""
        if isinstance(exc, SendError):
            error: SendError = exc
        else:
            log.error("unexpected error sending job %s: %r", row.job_id, exc)
            error = RetryableSendError(repr(exc)[:300], name="internal_error")
        try:
            retrying = self.store.retry_or_fail(row, error)
        except redis.RedisError:
            raise  # Redis, not the job, failed: the claim stays, and a later run recovers the job
        except Exception as unreadable:
            log.error("job %s is unreadable (%r): failed", row.job_id, unreadable)
            reason = f"the job hash is unreadable: {unreadable!r}"[:300]
            self.store.fail(row.job_id, name="bad_payload", message=reason, member=row.member)
            retrying = False
        if retrying:
            self.report.retrying += 1
        else:
            self.report.failed += 1
