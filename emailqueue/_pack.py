"""Packing: queued single emails sent together, up to 100 in one ``POST /emails/batch``.

Resend's default team limit is 2 requests/s; the batch endpoint takes up to 100 *different*
emails per request (docs/PLATFORM.md, "Resend: batch" and "Resend: idempotency keys"). A
drain that packs delivers a backlog of 1,000 single emails in 10 requests instead of 1,000.

Exactly once, as for a single job:

1. **Fixed before the request.** The script that takes jobs off the queue writes the pack (its
   job ids in order and its Idempotency-Key) in the same atomic step (:mod:`._pack_scripts`);
   the exact JSON body is stored next (``HSETNX``) before the first request. Every later send of
   the pack, a retry or a recovery, sends that stored body under that key. Resend answers a
   replay with the original reply, and a *different* body under the same key with 409
   ``invalid_idempotent_request`` (which is why the body, not just the ids, is fixed).
2. **Recovered as a unit.** A pack's entry in ``emailqueue:packs:<q>`` is due when its claim
   lapses (job timeout plus grace, as for a single claim), or when its retry comes. A later
   drain takes a due pack atomically and sends the same body under the same key.
3. **Only never-attempted jobs.** A job that has been tried under its own key (a retry, a
   recovery, a requeue) is not packed: if an earlier attempt did reach Resend, only its own key
   protects it. It goes the single way.
4. **Permissive validation.** One bad email does not sink the others: Resend sends the valid
   ones and lists the rejected indexes; each rejected email fails alone, through the store's one
   failure path, with Resend's message.
5. **Not failed while Resend may have it.** A pack whose attempts run out after a send of it
   failed ambiguously (a lost reply, a 5xx) is resent as a unit, with the usual backoff (up to
   its cap), until Resend answers for certain, and its jobs fail as ``outcome_unknown`` only
   when the key's 24 h window is closing (:mod:`._retry`): failed, each would be requeued under
   its own key, which Resend cannot match with the pack's.

Packing never waits for a batch to fill: a drain packs what is queued when it claims. Emails
the batch endpoint refuses (attachments, ``send_at``), fan-out chunks (already batches) and
immediate sends keep their own path. ``EMAIL_PACK=false`` turns packing off.

Each email's Resend id (from the batch reply) is recorded on its lifecycle's sent step
(:mod:`._events`, kept ``EMAIL_EVENTS_TTL_S``), in the ack's own MULTI: the job itself is deleted
on success (``result_ttl=0``). Look one up with :meth:`._store.JobStore.resend_id` or
``emailqueue status <job id>``.

``emailqueue worker`` packs too (:class:`._worker.EmailWorker`): between jobs, it runs this same
drain code in its own process, bounded, through a Resend client of its own (RQ forks a work
horse per job, and the horses own the preloaded one). Two things make that safe. The job RQ is
running is never in a pack: RQ popped it before any pack was claimed, and it runs alone under its
own key; a round takes only what is still queued. And the packs of a worker that dies are
recovered by the next round of any worker (each runs one when it starts and on RQ's maintenance
cadence: every 10 minutes, or up to about 14 on an idle worker, which checks it between its
405 s waits for a job) or by a drain, so a deployment with VM workers only recovers them too.
A stock ``rq worker`` does not pack, unless given ``--worker-class emailqueue.EmailWorker``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._events import SentEmail
from ._exceptions import PermanentSendError, QuotaExceededError, RetryableSendError, SendError
from ._pack_scripts import PackRow
from ._payload import MAX_BATCH, Payload, decode_job_data, parse_payload
from ._ratelimit import RateLimiter
from ._retry import (
    backoff_delay,
    hold_on_delay,
    is_ambiguous,
    outcome_unknown,
    quota_delay,
    window_closing,
)
from ._send import Outcome, Sender, send
from ._settings import Settings
from ._store import JobStore

log = logging.getLogger("emailqueue.pack")

#: The most emails in one pack: Resend's batch limit.
PACK_SIZE = MAX_BATCH


@dataclass(frozen=True)
class Prepared:
    """A pack ready to send: its row, and the job ids and emails of its body, in order."""

    row: PackRow
    ids: list[str]
    emails: list[dict[str, object]]


@dataclass(frozen=True)
class Settled:
    """What became of one pack's send: emails sent, emails failed, and whether it will retry."""

    sent: int
    failed: int
    retrying: bool


class Packer:
    """Builds, sends and settles the packs of one drain run."""

    def __init__(
        self,
        store: JobStore,
        client: Sender,
        settings: Settings,
        limiter: RateLimiter,
        *,
        wall_clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.store, self.client, self.settings, self.limiter = store, client, settings, limiter
        self.wall_clock, self.rng = wall_clock, rng

    def prepare(self, rows: list[PackRow]) -> list[Prepared]:
        """The body of each pack: the stored one, or built from the jobs and stored before any
        request, each pack marked as being sent (one round trip for all). A job whose data
        cannot be read fails alone."""
        ready: list[Prepared] = []
        bodies: dict[str, str] = {}
        for row in rows:
            if row.body:
                stored = json.loads(row.body)
                ready.append(Prepared(row, list(stored["ids"]), list(stored["emails"])))
                bodies[row.pack_id] = ""
                continue
            data: list[bytes | None] = list(row.data) if row.data else self.store.job_data(row.ids)
            ids, emails = self._build(row, data)
            bodies[row.pack_id] = json.dumps({"ids": ids, "emails": emails}, separators=(",", ":"))
            ready.append(Prepared(row, ids, emails))
        self.store.pack_sending(bodies)
        return ready

    def _build(self, row: PackRow, data: list[bytes | None]) -> tuple[list[str], list[dict[str, object]]]:
        ids: list[str] = []
        emails: list[dict[str, object]] = []
        for job_id, raw in zip(row.ids, data, strict=True):
            if raw is None:
                continue  # the job hash is gone: nothing to send
            try:
                payload = parse_payload(decode_job_data(raw)["payload"])
            except PermanentSendError as exc:
                log.error("job %s in pack %s is unreadable: failed", job_id, row.pack_id)
                self.store.fail(job_id, name=exc.name, message=exc.message[:300], member="")
                continue
            ids.append(job_id)
            emails.append(payload.email)
        return ids, emails

    def send(self, pack: Prepared, delay: float, sleep: Callable[[float], None]) -> Outcome:
        """Runs in the pool: wait for the pack's send slot, then one permissive batch request."""
        if not pack.emails:
            return Outcome(sent=0)
        if delay > 0:
            sleep(delay)
        if pack.row.maybe_sent and window_closing(pack.row.since, self.wall_clock()):
            raise outcome_unknown(None)  # Resend may have forgotten the key: a resend could send twice
        payload = Payload(list(pack.emails), pack.row.key, None, list(pack.ids), batch=True)
        return send(payload, self.client, limiter=self.limiter, slot_reserved=True)

    def settle(self, pack: Prepared, outcome: Outcome | None, error: BaseException | None) -> Settled:
        """Record a pack's result: rejected emails fail alone, accepted ones are done (their
        Resend ids kept); a failed request is retried as a unit, or fails every job at the end."""
        if error is None and outcome is not None:
            for index, message in sorted(outcome.rejected.items()):
                self.store.fail_rejected(pack.ids[index], message)
            sent = [
                SentEmail(job_id=pack.ids[i], resend_id=rid, to=_first_recipient(pack.emails[i]))
                for i, rid in sorted(outcome.resend_ids.items())
                if rid and i < len(pack.ids)
            ]
            done = [job_id for i, job_id in enumerate(pack.ids) if i not in outcome.rejected]
            self.store.pack_ack(pack.row, sent, done=done)
            if outcome.rejected:
                log.warning("pack %s: %d email(s) rejected by Resend", pack.row.key, len(outcome.rejected))
            return Settled(sent=outcome.sent, failed=len(outcome.rejected), retrying=False)
        exc = (
            error
            if isinstance(error, SendError)
            else RetryableSendError(repr(error)[:300], name="internal_error")
        )
        return self._retry_or_fail(pack.row, exc)

    def _retry_or_fail(self, row: PackRow, exc: SendError) -> Settled:
        """A failed request: retry the pack as a unit (quota: without spending an attempt), or,
        out of attempts, fail its jobs; unless Resend may have accepted it (see ``_retry``)."""
        now, attempts, settings = self.wall_clock(), row.attempts + 1, self.settings
        maybe_sent = row.maybe_sent or is_ambiguous(exc)
        wait: int | None = None
        if isinstance(exc, QuotaExceededError):
            wait = quota_delay(exc, settings, self.rng)
            self.store.pack_retry(row, due=now + wait, error=exc, spend=False, maybe_sent=maybe_sent)
            return Settled(sent=0, failed=0, retrying=True)
        if isinstance(exc, RetryableSendError) and attempts < settings.email_max_attempts:
            wait = backoff_delay(exc, attempts, settings, self.rng)
            log.warning("pack %s attempt %d failed (%s); retry in %ds", row.key, attempts, exc, wait)
        elif maybe_sent and isinstance(exc, RetryableSendError):
            # Out of attempts, but Resend may have the pack: resend it under its key while it lasts.
            wait = hold_on_delay(
                exc, attempts=attempts, since=row.since, now=now, settings=settings, rng=self.rng
            )
            if wait is None:
                exc = outcome_unknown(exc)
            else:
                log.warning(
                    "pack %s attempt %d failed (%s) and Resend may have accepted it: resent under the "
                    "same key in %ds, until Resend answers for certain",
                    row.key, attempts, exc, wait,
                )  # fmt: skip
        if wait is not None:
            self.store.pack_retry(row, due=now + wait, error=exc, maybe_sent=maybe_sent)
            return Settled(sent=0, failed=0, retrying=True)
        log.warning("pack %s failed for good after %d attempt(s): %s", row.key, attempts, exc)
        failed = self.store.pack_fail(row, exc)
        return Settled(sent=0, failed=len(failed), retrying=False)


def _first_recipient(email: dict[str, Any]) -> str:
    to = email.get("to")
    first = to[0] if isinstance(to, list) and to else to
    return str(first or "")
