"""The job store: every change of a job's state, in one place.

+--------------+----------------------------------------------+----------------------------------+
| change       | what it does                                 | who calls it                     |
+==============+==============================================+==================================+
| enqueue      | ENQUEUE, via :func:`._enqueue.write_jobs`    | ``send_email``, ``send_*``       |
| claim        | queued -> started, one atomic script         | the drain                        |
| claim_new    | new job -> started + a send slot (atomic)    | ``send_email(now=True)``         |
| claim_queued | queued -> started + a send slot (atomic)     | ``deliver_now``, ``now=True``    |
| accept       | record Resend's acceptance on the job        | ``deliver`` under a VM worker    |
| ack          | started -> gone (``result_ttl=0``)           | the drain, immediate sends       |
| retry        | the retry policy, then RQ's ``Job.retry``    | drain, immediate (RQ for VMs)    |
| fail         | -> failed, the one FAIL script               | drain, recovery, rejected, bad   |
| recover      | abandoned -> queued, held (HOLD) or failed   | the drain                        |
| requeue      | failed -> queued (accepted: -> gone; outcome | admin API, CLI, dashboard        |
|              | unknown: left failed unless forced)          |                                  |
| orphans      | a hash in no registry, no TTL -> gone/queued | the drain, on runs that did work |
| pack_*       | queued -> a pack -> gone or failed           | the drain, via :mod:`._pack`     |
+--------------+----------------------------------------------+----------------------------------+

**An email Resend accepted is never failed nor sent again.** RQ's success handling of a job
fetches every execution the job's registry lists, and one whose hash expired makes it raise
(docs/PLATFORM.md, "RQ: executions"). So a re-run after a recovery would turn an email Resend
accepted into a failure, retried until FAILED, and ``failed requeue`` would send it again. The
store closes this at the root: :meth:`JobStore.recover` forgets the dead execution everywhere RQ
lists it, :meth:`JobStore.accept` records the acceptance on the job hash and forgets the dead
executions a worker's own maintenance recovered, and recovery, ``deliver``, the drain and
requeue all honour a recorded acceptance (the job is done, nothing is sent).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from base64 import b64encode
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from ._constants import SUPPRESSED_KEY
from ._enqueue import job_mapping
from ._events import SentEmail, record_sent
from ._exceptions import SendError
from ._failure import failure_record, key_window_start, meta_with, read_record, requeue_record
from ._keys import QueueKeys
from ._now_scripts import Claim, NowClaimed, NowScripts
from ._pack_scripts import PackKeys, PackRow, PackScripts
from ._payload import PACK_FIELD, Payload, idempotency_key_for
from ._ratelimit import limiter_key
from ._retry import OUTCOME_UNKNOWN, apply_failure_policy, plan_abandoned
from ._scripts import ACCEPTED_FIELD, Claimed, Orphans, Recovered, Scripts
from ._settings import Settings

log = logging.getLogger("emailqueue")

__all__ = ["Claimed", "JobStore", "Orphans", "Recovered"]


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JobStore:
    """The state changes of the jobs of one queue.

    Args:
        conn: the Redis connection.
        queue_name: the RQ queue.
        settings: failure TTL, job timeout and the number of attempts come from here.
        wall_clock: Unix time (tests pass a later one).
    """

    def __init__(
        self,
        conn: redis.Redis,
        queue_name: str,
        settings: Settings,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn, self.settings, self.wall_clock = conn, settings, wall_clock
        self.queue = Queue(queue_name, connection=conn, serializer=JSONSerializer)
        self.keys = QueueKeys.of(self.queue)
        self.scripts = Scripts(conn, self.keys)
        self.pack_keys = PackKeys.of(queue_name)
        self.pack_scripts = PackScripts(conn, self.pack_keys)
        self.now_scripts = NowScripts(conn, self.keys)

    # --- the drain's claim and ack ---
    def claim(self, *, n: int, now: float, execution_prefix: str, worker: str, grace: int) -> list[Claimed]:
        """Take up to ``n`` queued jobs (atomic): status started, an entry in the started registry
        that counts as abandoned after the job's timeout plus ``grace``."""
        return self.scripts.claim(
            n=n,
            now=now,
            execution_prefix=execution_prefix,
            worker=worker,
            started_at=_stamp(now),
            grace=grace,
        )

    # --- the immediate path's claims (send_email(now=True), deliver_now; see ._now) ---
    def claim_new(self, claim: Claim, *, fields: dict[str, Any], checks: tuple[str, ...]) -> NowClaimed:
        """Write a new job (hash ``fields``, already ``started``) claimed for its caller, and take
        a send slot of the shared limit in the same step, unless a recipient in ``checks`` is
        suppressed (see :meth:`._now_scripts.NowScripts.write_and_claim`)."""
        return self.now_scripts.write_and_claim(
            claim=claim,
            fields=fields,
            checks=checks,
            queues_key=Queue.redis_queues_keys,
            limiter_key=limiter_key(self.queue.name),
            suppression_key=SUPPRESSED_KEY,
        )

    def claim_queued(self, claim: Claim) -> NowClaimed:
        """Claim a job waiting in the queue for its caller, with a send slot (atomic; a drain or
        worker that took it first wins)."""
        return self.now_scripts.claim_queued(claim=claim, limiter_key=limiter_key(self.queue.name))

    def unclaim(self, rows: list[Claimed]) -> None:
        """Give claimed jobs back, to the front of the queue."""
        if rows:
            self.scripts.unclaim(rows)

    def ack(self, rows: list[Claimed], sent: list[SentEmail] | None = None) -> None:
        """Sent: drop the started entries and delete the jobs (``result_ttl=0``), and record each
        ``sent`` email's Resend id on its lifecycle (:mod:`._events`), in one round trip."""
        if not rows:
            return
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.started, *[row.member for row in rows])
            pipe.delete(*[self.keys.job_prefix + row.job_id for row in rows])
            record_sent(pipe, sent or [], ttl=self.settings.email_events_ttl_s, now=self.wall_clock())
            pipe.execute()

    def created_at(self, job_id: str) -> float:
        """When the job was created (Unix time), before any send under its key; 0 if unknown."""
        raw = self.conn.hget(self.keys.job_prefix + job_id, "created_at")
        try:
            return utcparse(_text(raw)).timestamp() if raw else 0.0
        except ValueError:
            return 0.0

    # --- a VM worker's acceptance ---
    def is_accepted(self, job_id: str) -> bool:
        """Whether Resend's acceptance of this job's email(s) is recorded."""
        return bool(self.conn.hexists(self.keys.job_prefix + job_id, ACCEPTED_FIELD))

    def accept(self, job_id: str, *, worker_name: str, sent: int) -> bool:
        """Record that Resend accepted the job's email(s), and forget the job's dead executions (so
        RQ's success handling can delete the job). False if the job hash is gone."""
        record = json.dumps({"at": _stamp(self.wall_clock()), "sent": sent})
        return self.scripts.accept(job_id=job_id, record=record, worker_name=worker_name)

    # --- retry and fail ---
    def retry_or_fail(self, row: Claimed, error: SendError) -> bool:
        """A claimed job's send failed: apply the retry policy, then schedule the retry (RQ's
        ``Job.retry``) or fail the job. Returns True if it will be retried, False if it failed.

        Raises:
            redis.RedisError: Redis failed; the claim stays, a later drain recovers the job.
            Exception: RQ cannot load the job (garbage fields): the caller fails it raw.
        """
        job = Job.fetch(row.job_id, connection=self.conn, serializer=JSONSerializer)
        error = apply_failure_policy(job, error, self.settings, now=self.wall_clock())
        if job.should_retry:
            with self.conn.pipeline() as pipe:
                pipe.zrem(self.keys.started, row.member)
                job.retry(self.queue, pipe)
                pipe.execute()
            return True
        self._fail(row.job_id, job.meta, member=row.member, exc_string=str(error), ttl=job.failure_ttl)
        return False

    def fail(
        self,
        job_id: str,
        *,
        name: str,
        message: str,
        member: str,
        meta: Any = None,
    ) -> bool:
        """Fail a job outside a send (abandoned, unreadable): our record, then the FAIL script."""
        record = failure_record(meta, name=name, message=message)
        return self._fail(job_id, meta_with(meta, record), member=member, exc_string=f"{name}: {message}")

    def _fail(
        self,
        job_id: str,
        meta: Any,
        *,
        member: str,
        exc_string: str,
        ttl: int | None = None,
        create: list[Any] | None = None,
    ) -> bool:
        now = self.wall_clock()
        return self.scripts.fail(
            job_id=job_id,
            member=member,
            meta=meta if isinstance(meta, str) else json.dumps(meta or {}),
            now=now,
            ended_at=_stamp(now),
            ttl=ttl or self.settings.email_failure_ttl_s,
            result_type=Result.Type.FAILED.value,
            exc_string=b64encode(zlib.compress(exc_string.encode())).decode(),  # as RQ's Result stores it
            create=create,
        )

    def record_rejected(self, payload: Payload, rejected: dict[int, str]) -> list[str]:
        """Make each recipient Resend rejected from a batch a failed job of its own, under its own
        id, with Resend's reason. The valid recipients were sent and are done. Returns the ids."""
        failed = []
        for index, message in sorted(rejected.items()):
            job_id = payload.ids[index]
            single = Payload.single(payload.emails[index], idempotency_key_for(job_id), payload.event_id)
            mapping = job_mapping(single, job_id, queue=self.queue, settings=self.settings)
            record = failure_record(None, name="rejected_recipient", message=message, status_code=422)
            create: list[Any] = []
            for field, value in mapping.items():
                create += [field, value]
            self._fail(
                job_id,
                meta_with(None, record),
                member="",
                exc_string=f"rejected by Resend: {message}",
                create=create,
            )
            failed.append(job_id)
        log.warning("batch %s: %d recipient(s) rejected by Resend", payload.idempotency_key, len(failed))
        return failed

    # --- recovery ---
    def promote(self, *, now: float, limit: int) -> int:
        """Move due retries back to the queue (unless a live RQ scheduler is doing it: one whose
        lock was refreshed within ``_scripts.SCHEDULER_STALE_S``; a dead one's is ignored)."""
        return self.scripts.promote(now=now, limit=limit)

    def sweep(self, *, now: float, grace: int) -> list[str]:
        """Put back jobs a dead VM worker left in RQ's intermediate list."""
        return self.scripts.sweep(now=now, grace=grace)

    def recover(self, *, now: float, limit: int, lease: int) -> Recovered:
        """Abandoned executions: requeue (one attempt spent), finish (Resend accepted it), or,
        with no attempts left, hold on to them (:meth:`hold_abandoned`)."""
        recovered = self.scripts.recover(now=now, limit=limit, lease=lease)
        for job_id, member in recovered.exhausted:
            self.hold_abandoned(job_id, member, now=now)
        if recovered.requeued:
            log.warning(
                "requeued %d job(s) abandoned by a dead worker (same idempotency keys)",
                len(recovered.requeued),
            )
        return recovered

    def hold_abandoned(self, job_id: str, member: str, *, now: float) -> bool:
        """A job abandoned with no attempts left (its worker may have died after Resend accepted
        it): resent later under its key while the key's window lasts (HOLD), else failed as
        ``outcome_unknown`` (FAIL); see :func:`._retry.plan_abandoned`. Returns True if it will be
        resent, False if it failed or someone else settled it."""
        meta = self.conn.hget(self.keys.job_prefix + job_id, "meta")
        delay, error, record = plan_abandoned(
            meta, since=key_window_start(meta, self.created_at(job_id)), now=now, settings=self.settings
        )
        if delay is None:
            log.warning("job %s: abandoned as its key's window closes: failed (%s)", job_id, error.name)
            self._fail(job_id, meta_with(meta, record), member=member, exc_string=f"{error.name}: {error}")
            return False
        log.warning("job %s: abandoned with no attempts left; resent under its key in %ds", job_id, delay)
        due = math.ceil(now + delay)  # RQ schedules in whole seconds
        return self.scripts.hold(job_id=job_id, member=member, meta=meta_with(meta, record), due=due)

    def sweep_orphans(self, *, count: int, every_s: int) -> Orphans:
        """At most once per ``every_s`` seconds (whichever drain comes first), one bounded step of
        the orphan sweep (see ``_lua_recover.ORPHANS``): job hashes of this queue with no TTL that no
        list or registry holds are deleted, or requeued if they hold an email nobody accepted."""
        found = self.scripts.sweep_orphans(count=count, every_s=every_s, queues_key=Queue.redis_queues_keys)
        if found.removed or found.requeued:
            log.warning(
                "orphan sweep: %d job hash(es) in no registry and with no TTL deleted, %d requeued",
                found.removed,
                found.requeued,
            )
        return found

    # --- repair ---
    def requeue(
        self, job_ids: list[str], *, enqueued_at: str, force: bool = False
    ) -> tuple[list[str], list[str], list[str], list[str]]:
        """Failed jobs back on the queue with a full set of retries. Returns (requeued, not found,
        already delivered: Resend accepted them, so they were deleted instead, needs force).

        A job that failed as ``outcome_unknown`` (Resend may have delivered it and no longer
        knows its key, so a resend may be a second email) is left failed, in "needs force",
        unless ``force``: then it is requeued to be sent again, as a new email to Resend."""
        with self.conn.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job_prefix + job_id, "meta")
                pipe.zscore(self.keys.failed, job_id)
            replies = pipe.execute() if job_ids else []
        pairs, needs_force = [], []
        for job_id, meta, failed in zip(job_ids, replies[::2], replies[1::2], strict=True):
            error = read_record(meta).get("error")
            unknown = error is not None and error["name"] == OUTCOME_UNKNOWN
            if unknown and failed is not None and not force:
                needs_force.append(job_id)
                continue
            # Forced: its earlier sends no longer count, or it would fail again unsent
            # (a send after an ambiguous one is never made once the key's window is closing).
            record = requeue_record(meta, now=self.wall_clock(), maybe_sent=not unknown)
            pairs.append((job_id, meta_with(meta, record)))
        requeued, missing, delivered = self.scripts.requeue(
            metas=pairs,
            retries_left=max(self.settings.email_max_attempts - 1, 0),
            enqueued_at=enqueued_at,
            queues_key=Queue.redis_queues_keys,
        )
        return requeued, missing, delivered, needs_force

    # --- packs: queued single emails sent together in one batch request (see ._pack) ---
    def pack_claim(
        self, *, units: int, now: float, execution_prefix: str, worker: str, grace: int, lease: int, size: int
    ) -> tuple[list[Claimed], list[PackRow]]:
        """Take up to ``units`` requests' worth of queued jobs (atomic): packable ones into packs of
        up to ``size``, each written (ids and Idempotency-Key) with a claim that lapses after
        ``lease`` s; the others claimed one by one as :meth:`claim` does."""
        singles, packs = self.pack_scripts.claim(
            queue_keys=(self.keys.queue, self.keys.started),
            units=units,
            max_ids=units * size,
            now=now,
            execution_prefix=execution_prefix,
            worker=worker,
            started_at=_stamp(now),
            job_prefix=self.keys.job_prefix,
            grace=grace,
            accepted_field=ACCEPTED_FIELD,
            pack_field=PACK_FIELD,
            pack_id_prefix=execution_prefix,
            max_pack=size,
            lease=lease,
            key_prefix=f"{idempotency_key_for('pack-')}",
        )
        rows = [Claimed(_text(r[0]), _text(r[1]), r[2], r[3], bool(r[4])) for r in singles]
        return rows, packs

    def pack_take(self, *, now: float, limit: int, lease: int) -> list[PackRow]:
        """Take due packs (a dead drain's, or a retry's time has come), each for ``lease`` s."""
        return self.pack_scripts.take(now=now, limit=limit, lease=lease)

    def pack_sending(self, bodies: dict[str, str]) -> None:
        """Just before the packs' requests (atomic, one round trip): store each fresh pack's exact
        body (pack id -> body; '' for a pack whose body is stored; a stored body is kept) and
        mark each pack as being sent, so a later drain that takes it from a dead one knows
        Resend may have it. Settling the pack clears the mark."""
        self.pack_scripts.sending(bodies)

    def job_data(self, job_ids: list[str]) -> list[bytes | None]:
        """The ``data`` field of each job (to rebuild a pack stored without its body)."""
        with self.conn.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job_prefix + job_id, "data")
            return list(pipe.execute())

    def pack_ack(self, pack: PackRow, sent: list[SentEmail], *, done: list[str]) -> None:
        """Sent: record each accepted email's Resend id on its lifecycle (:mod:`._events`), delete
        the jobs in ``done`` (``result_ttl=0``) and the pack, all at once (MULTI)."""
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.zrem(self.pack_keys.packs, pack.pack_id)
            pipe.delete(self.pack_keys.pack_prefix + pack.pack_id)
            if done:
                pipe.delete(*[self.keys.job_prefix + job_id for job_id in done])
            record_sent(pipe, sent, ttl=self.settings.email_events_ttl_s, now=self.wall_clock())
            pipe.execute()

    def pack_retry(
        self, pack: PackRow, *, due: float, error: SendError, spend: bool = True, maybe_sent: bool = False
    ) -> None:
        """Retry the pack at ``due`` as a unit: same ids, same body, same Idempotency-Key.
        ``maybe_sent``: a send failed ambiguously, so Resend may have the pack (kept for good)."""
        key = self.pack_keys.pack_prefix + pack.pack_id
        with self.conn.pipeline(transaction=True) as pipe:
            if spend:
                pipe.hincrby(key, "attempts", 1)
            if maybe_sent:
                pipe.hset(key, "unknown", "1")
            pipe.hdel(key, "sending")
            pipe.hset(key, "error", f"{error.name}: {error}"[:300])
            pipe.zadd(self.pack_keys.packs, {pack.pack_id: due}, xx=True)
            pipe.execute()

    def pack_release(self, packs: list[PackRow], *, now: float) -> None:
        """Packs that got no send slot: due again at once, for the next run (same ids, same key)."""
        if packs:
            self.conn.zadd(self.pack_keys.packs, {p.pack_id: now for p in packs}, xx=True)

    def pack_fail(self, pack: PackRow, error: SendError) -> list[str]:
        """The pack failed for good: each of its jobs fails with the error (the one FAIL path),
        then the pack is dropped. Returns the job ids failed."""
        failed = []
        for job_id in pack.ids:
            record = failure_record(
                None, name=error.name, message=str(error)[:300], status_code=error.status_code
            )
            exc = f"{error.name}: {error}"
            if self._fail(job_id, meta_with(None, record), member="", exc_string=exc):
                failed.append(job_id)
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.zrem(self.pack_keys.packs, pack.pack_id)
            pipe.delete(self.pack_keys.pack_prefix + pack.pack_id)
            pipe.execute()
        return failed

    def fail_rejected(self, job_id: str, message: str) -> bool:
        """Resend rejected this job's email from a pack (permissive validation): it fails alone."""
        record = failure_record(None, name="rejected_recipient", message=message, status_code=422)
        return self._fail(
            job_id, meta_with(None, record), member="", exc_string=f"rejected by Resend: {message}"
        )

    def resend_id(self, job_id: str) -> str | None:
        """The Resend id recorded for this job's email (its lifecycle's sent step), if any."""
        from ._events import lookup

        found = lookup(self.conn, job_id, ttl=self.settings.email_events_ttl_s, now=self.wall_clock())
        return found[0].resend_id if found else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
