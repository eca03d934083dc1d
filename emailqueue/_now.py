"""Send now, with the queue as the safety net: ``send_email(now=True)`` and :func:`deliver_now`.

The email is made durable first, then the caller claims it and sends it itself:

1. **write + claim**, one round trip (:meth:`._store.JobStore.claim_new`): the job is written as an
   ordinary RQ job, already claimed by this caller exactly as a drain claims one, and a send slot
   of the shared rate limit is taken if one is free within ``EMAIL_NOW_MAX_WAIT_S``. With no slot
   in time, the job is simply queued and a drain or worker sends it.
2. **send**, with the job's own Idempotency-Key (``emailqueue-<job id>``) and a short timeout
   (``EMAIL_NOW_TIMEOUT_S``).
3. **ack**, one round trip: drop the claim and delete the job, as a drain does.

From the moment the job is written, nothing reaches the caller as an exception. A Resend error
goes through the retry policy every worker applies (a scheduled retry, or failed for good); a
Redis error or a crash leaves the claim, which the drain's RECOVER takes back once it is older
than the send could last (the wait, the timeouts and the drain's grace), and requeues with the
same key, so Resend never sends it twice.

:func:`deliver_now` does steps 2-3 for a job already queued (claiming it from the queue first):
an app can queue inside its transaction and send after the commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from rq import Queue
from rq.job import JobStatus

from ._connection import redis_errors
from ._enqueue import PreparedJob, resolve_queue, suppressed_error, write_jobs
from ._exceptions import EmailQueueError, PermanentSendError
from ._now_attempt import WORKER_NAME, NowOutcome, attempt, new_claim, now_client, payload_of, settle_failure
from ._send import Sender
from ._settings import Settings, load_settings
from ._store import JobStore

log = logging.getLogger("emailqueue.now")


def send_now(queue: Queue, job: PreparedJob, settings: Settings) -> str:
    """``send_email(now=True)``: write ``job`` and send it now. Returns its id.

    A job guarded by an ``idempotency_key`` is written by the enqueue script, which owns the key
    check, then claimed from the queue: one round trip more than a plain email.
    """
    client = now_client(settings)  # without a Resend key, fail before anything is written
    if job.guards:
        written = write_jobs(queue.connection, queue, [job], settings.email_dedup_ttl_s)
        if written.suppressed:
            raise suppressed_error(job, written.suppressed)
        outcome = _deliver_queued(queue, job.job_id, settings, client, time.time, time.sleep)
    else:
        outcome = send_prepared_now(queue, job, settings, client=client)
    _log_outcome(outcome)
    return job.job_id


def send_queued_now(queue: Queue, job_ids: list[str], settings: Settings) -> list[str]:
    """``send_event_email(now=True)``: immediate attempts for the jobs just queued."""
    for outcome in deliver_ids_now(queue, job_ids, settings):
        _log_outcome(outcome)
    return job_ids


def _log_outcome(outcome: NowOutcome) -> None:
    if outcome.sent:
        log.info("job %s sent now", outcome.job_id)
    else:
        log.info(
            "job %s not sent now (%s: %s); the queue delivers it",
            outcome.job_id,
            outcome.status,
            outcome.detail,
        )


def send_prepared_now(
    queue: Queue,
    job: PreparedJob,
    settings: Settings,
    *,
    client: Sender | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> NowOutcome:
    """Write ``job`` (a new job with a random id) claimed for this caller, then send it now.

    Raises:
        ConfigurationError: no Resend key here (outside dev mode); nothing was written.
        QueueError: the write failed; the email may not be queued.
    """
    client = client if client is not None else now_client(settings)
    claim = new_claim(job.job_id, settings, clock())
    fields = {
        **job.mapping,
        "status": JobStatus.STARTED.value,
        "started_at": claim.started_at,
        "worker_name": WORKER_NAME,
    }
    store = JobStore(queue.connection, queue.name, settings)
    with redis_errors("send_email(now=True)"):
        claimed = store.claim_new(claim, fields=fields, checks=job.checks)
    if claimed.state == 3:
        raise suppressed_error(job, claimed.hits)
    # From here on the email is durable: nothing below raises.
    if claimed.state == 0:
        return NowOutcome(job.job_id, "queued", "no send slot free under RESEND_RATE_LIMIT in time")
    if claimed.state == 2:
        return NowOutcome(job.job_id, "queued", "already queued by an earlier attempt of this call")
    payload = payload_of(job.mapping["data"])
    return attempt(store, claim, payload, client, claimed.wait, sleep)


def deliver_now(
    job_id: str,
    *,
    connection: redis.Redis | None = None,
    queue: Queue | None = None,
    settings: Settings | None = None,
    client: Sender | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> NowOutcome:
    """Send a queued job right now, in this process; the queue stays the safety net.

    Call it after your transaction commits (or from a background task) with the id
    ``send_email`` returned. The job is claimed from the queue atomically (a drain or worker that
    took it first wins), sent with its Idempotency-Key and a short timeout
    (``EMAIL_NOW_TIMEOUT_S``), and acked. It never raises for a failed delivery: a Resend error
    schedules the usual retry, anything else leaves the job to a later drain.

    Args:
        job_id: the id returned by :func:`send_email` (or one of :func:`send_event_email`'s).
        connection, queue, settings: as for :func:`send_email`.
        client: the Resend client; default: one built from settings with the short timeout.
        clock, sleep: injected for tests (Unix time; the wait for a send slot).

    Returns:
        A :class:`NowOutcome`; ``.sent`` is True when Resend accepted the email.

    Raises:
        ConfigurationError: no Redis URL, or no ``RESEND_API_KEY`` in this process (outside dev
            mode); nothing was changed.
    """
    settings = settings or load_settings()
    client = client if client is not None else now_client(settings)
    q = resolve_queue(settings, connection, queue)
    return _deliver_queued(q, job_id, settings, client, clock, sleep)


def deliver_ids_now(
    queue: Queue,
    job_ids: list[str],
    settings: Settings,
    *,
    client: Sender | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[NowOutcome]:
    """Immediate attempts for jobs just queued (``send_event_email(now=True)``), in order. They
    stop at the first that finds no send slot in time: the rest go out through the queue."""
    client = client if client is not None else now_client(settings)
    outcomes: list[NowOutcome] = []
    for job_id in job_ids:
        outcome = _deliver_queued(queue, job_id, settings, client, clock, sleep)
        outcomes.append(outcome)
        if outcome.status == "queued":
            break
    return outcomes


def _deliver_queued(
    queue: Queue,
    job_id: str,
    settings: Settings,
    client: Sender,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> NowOutcome:
    claim = new_claim(job_id, settings, clock())
    store = JobStore(queue.connection, queue.name, settings)
    try:
        with redis_errors("deliver_now"):
            claimed = store.claim_queued(claim)
    except EmailQueueError as exc:
        # The job was queued before this call; whatever the claim did, a drain delivers it.
        log.warning("deliver_now %s: %s; left to the queue", job_id, exc)
        return NowOutcome(job_id, "left_to_recovery", str(exc))
    if claimed.state == 0:
        return NowOutcome(job_id, "not_queued", "the job is not waiting in the queue")
    if claimed.state == 2:
        return NowOutcome(job_id, "queued", "no send slot free under RESEND_RATE_LIMIT in time")
    try:
        payload = payload_of(claimed.data or b"")
    except PermanentSendError as exc:
        return settle_failure(store, claim, exc)
    return attempt(store, claim, payload, client, claimed.wait, sleep)
