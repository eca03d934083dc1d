"""Send now, with the queue as the safety net: ``send_email(now=True)`` and :func:`deliver_now`.

The email is made durable first, then the caller claims it and sends it itself:

1. **write + claim**, one round trip (``_now_scripts.WRITE_AND_CLAIM``): the job is written as an
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

import contextlib
import functools
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from . import _now_scripts
from ._connection import redis_errors
from ._constants import JOB_FUNC_PATH
from ._drain import ABANDON_GRACE_S
from ._enqueue import PreparedJob, resolve_queue, write_jobs
from ._exceptions import EmailQueueError, PermanentSendError, RetryableSendError, SendError
from ._jobs import apply_failure_policy
from ._keys import QueueKeys
from ._outbox import OutboxClient
from ._payload import Payload, parse_payload
from ._ratelimit import MARGIN, RateLimiter, limiter_key
from ._resend import ResendClient, build_http_client
from ._send import Sender, record_rejected, send
from ._settings import Settings, load_settings

log = logging.getLogger("emailqueue.now")

#: The ``worker_name`` an immediate claim writes on the job (what ``rq info`` shows).
WORKER_NAME = "emailqueue-now"

Status = Literal["sent", "queued", "retrying", "failed", "not_queued", "left_to_recovery"]


@dataclass(frozen=True)
class NowOutcome:
    """What an immediate attempt did with one job.

    ``status``:

    - ``sent``: Resend accepted the email (``.sent`` is True);
    - ``queued``: no send slot of ``RESEND_RATE_LIMIT`` was free in time; the job waits in the
      queue for a drain or worker;
    - ``retrying``: Resend answered with a transient error; the job retries with backoff;
    - ``failed``: Resend rejected the email for good; the job is in the failed list;
    - ``not_queued``: (:func:`deliver_now`) the job was not waiting in the queue: a drain or
      worker took it first, it was already sent or failed, or the id is unknown;
    - ``left_to_recovery``: something else failed after the claim (Redis unreachable, say); the
      claim stays, and a later drain requeues the job with the same Idempotency-Key.

    ``detail`` says why, when it was not sent.
    """

    job_id: str
    status: Status
    detail: str = ""

    @property
    def sent(self) -> bool:
        return self.status == "sent"


@dataclass(frozen=True)
class _Claim:
    """This caller's claim on a job: its started-registry member and when it counts as abandoned."""

    job_id: str
    member: str
    args: list[Any]  # the scripts' common ARGV: now .. job id

    @classmethod
    def new(cls, job_id: str, keys: QueueKeys, settings: Settings, now: float) -> _Claim:
        member = f"{job_id}:now-{uuid.uuid4().hex[:12]}"
        # The claim outlives the longest this attempt can take, plus the drain's grace; a
        # claim older than that belongs to a caller that died, and RECOVER takes it back.
        lasts = settings.email_now_max_wait_s + _now_timeouts(settings)[0] + settings.email_now_timeout_s
        interval = MARGIN / settings.resend_rate_limit if settings.resend_rate_limit else 0
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        args = [
            now,
            interval,
            settings.email_now_max_wait_s,
            now + lasts + ABANDON_GRACE_S,
            member,
            stamp,
            WORKER_NAME,
            keys.job_prefix + job_id,
            job_id,
        ]
        return cls(job_id, member, args)


def send_now(queue: Queue, job: PreparedJob, settings: Settings) -> str:
    """``send_email(now=True)``: write ``job`` and send it now. Returns its id.

    A job guarded by an ``idempotency_key`` is written by the enqueue script, which owns the key
    check, then claimed from the queue: one round trip more than a plain email.
    """
    client = now_client(settings)  # without a Resend key, fail before anything is written
    if job.guards:
        write_jobs(queue.connection, queue, [job], settings.email_dedup_ttl_s)
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
    keys = QueueKeys.of(queue)
    claim = _Claim.new(job.job_id, keys, settings, clock())
    fields = {
        **job.mapping,
        "status": JobStatus.STARTED.value,
        "started_at": claim.args[5],
        "worker_name": WORKER_NAME,
    }
    args = list(claim.args)
    for field, value in fields.items():
        args += [field, value]
    script = queue.connection.register_script(_now_scripts.WRITE_AND_CLAIM)
    with redis_errors("send_email(now=True)"):
        state, wait = script(
            keys=[keys.queue, queue.redis_queues_keys, keys.started, limiter_key(queue.name)], args=args
        )
    # From here on the email is durable: nothing below raises.
    if int(state) == 0:
        return NowOutcome(job.job_id, "queued", "no send slot free under RESEND_RATE_LIMIT in time")
    if int(state) == 2:
        return NowOutcome(job.job_id, "queued", "already queued by an earlier attempt of this call")
    payload = _payload_of(job.mapping["data"])
    return _attempt(queue, keys, claim, payload, settings, client, float(wait), sleep)


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
    keys = QueueKeys.of(queue)
    claim = _Claim.new(job_id, keys, settings, clock())
    script = queue.connection.register_script(_now_scripts.CLAIM_QUEUED)
    try:
        with redis_errors("deliver_now"):
            row = script(keys=[keys.queue, keys.started, limiter_key(queue.name)], args=claim.args)
    except EmailQueueError as exc:
        # The job was queued before this call; whatever the claim did, a drain delivers it.
        log.warning("deliver_now %s: %s; left to the queue", job_id, exc)
        return NowOutcome(job_id, "left_to_recovery", str(exc))
    if int(row[0]) == 0:
        return NowOutcome(job_id, "not_queued", "the job is not waiting in the queue")
    if int(row[0]) == 2:
        return NowOutcome(job_id, "queued", "no send slot free under RESEND_RATE_LIMIT in time")
    try:
        payload = _payload_of(row[2])
    except PermanentSendError as exc:
        return _settle_failure(queue, keys, claim, exc, settings)
    return _attempt(queue, keys, claim, payload, settings, client, float(row[1]), sleep)


def _attempt(
    queue: Queue,
    keys: QueueKeys,
    claim: _Claim,
    payload: Payload,
    settings: Settings,
    client: Sender,
    wait: float,
    sleep: Callable[[float], None],
) -> NowOutcome:
    """Send a claimed job and settle it. Never raises (but for KeyboardInterrupt and the like)."""
    try:
        if wait > 0:
            sleep(wait)
        outcome = send(payload, client)
    except SendError as exc:
        if exc.status_code == 429 and exc.name == "rate_limit_exceeded":
            limiter = RateLimiter(queue.connection, limiter_key(queue.name), settings.resend_rate_limit)
            with contextlib.suppress(EmailQueueError):
                limiter.pause(exc.retry_after or 1.0)  # every sender waits, not just this one
        return _settle_failure(queue, keys, claim, exc, settings)
    except Exception as exc:
        log.error("immediate send of job %s failed unexpectedly: %r", claim.job_id, exc)
        return _settle_failure(
            queue, keys, claim, RetryableSendError(repr(exc)[:300], name="internal_error"), settings
        )
    try:
        if outcome.rejected:
            record_rejected(queue.connection, queue.name, payload, outcome.rejected, settings)
        # The ack: drop the claim and delete the job (result_ttl=0), one round trip.
        with queue.connection.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.started, claim.member)
            pipe.delete(keys.job_prefix + claim.job_id)
            pipe.execute()
    except redis.RedisError as exc:
        # Sent, but not acked: a later drain requeues it and Resend answers the same key from
        # its idempotency cache, sending nothing again.
        log.warning("job %s sent but not acked (%r); a later drain settles it", claim.job_id, exc)
    return NowOutcome(claim.job_id, "sent")


def _settle_failure(
    queue: Queue, keys: QueueKeys, claim: _Claim, error: SendError, settings: Settings
) -> NowOutcome:
    """Retry or fail the claimed job through RQ's Job API, exactly as the drain does. If Redis
    fails here, the claim stays and a later drain recovers the job."""
    try:
        job = Job.fetch(claim.job_id, connection=queue.connection, serializer=JSONSerializer)
        apply_failure_policy(job, error, settings)
        with queue.connection.pipeline() as pipe:
            pipe.zrem(keys.started, claim.member)
            if job.should_retry:
                job.retry(queue, pipe)
                status: Status = "retrying"
            else:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                FailedJobRegistry(queue=queue).add(
                    job, ttl=job.failure_ttl, exc_string=str(error), pipeline=pipe
                )
                Result.create_failure(job, job.failure_ttl, exc_string=str(error), pipeline=pipe)
                status = "failed"
            pipe.execute()
    except Exception as exc:
        log.warning(
            "job %s: could not record the failed immediate send (%r); left to a later drain",
            claim.job_id,
            exc,
        )
        return NowOutcome(claim.job_id, "left_to_recovery", f"{error.name}: {error.message}"[:300])
    return NowOutcome(claim.job_id, status, f"{error.name}: {error.message}"[:300])


def _payload_of(data: bytes) -> Payload:
    """The payload of a job hash's ``data`` field (zlib-compressed JSON of an RQ call)."""
    try:
        func, _instance, args, kwargs = json.loads(zlib.decompress(data))
    except Exception:
        raise PermanentSendError("job data is not a JSON-serialized RQ call", name="bad_payload") from None
    if func != JOB_FUNC_PATH or args or not isinstance(kwargs, dict) or "payload" not in kwargs:
        raise PermanentSendError(f"not an emailqueue job ({str(func)[:80]})", name="bad_payload")
    return parse_payload(kwargs["payload"])


def _now_timeouts(settings: Settings) -> tuple[float, float]:
    """(connect, read) timeouts of an immediate send."""
    return min(settings.resend_connect_timeout_s, settings.email_now_timeout_s), settings.email_now_timeout_s


def now_client(settings: Settings) -> Sender:
    """The Resend client of immediate sends (short timeouts); the local outbox in dev mode
    without a key.

    Raises:
        ConfigurationError: no RESEND_API_KEY (outside dev mode).
    """
    if settings.resend_api_key is None and settings.dev_mode:
        return OutboxClient(settings.emailqueue_outbox_dir)
    connect, read = _now_timeouts(settings)
    return _cached_client(settings.require_api_key(), settings.resend_api_url, connect, read)


@functools.lru_cache(maxsize=8)
def _cached_client(api_key: str, base_url: str, connect: float, read: float) -> ResendClient:
    # One per configuration for the life of the process: warm invocations reuse its connections.
    return ResendClient(
        build_http_client(connect_timeout=connect, read_timeout=read), api_key=api_key, base_url=base_url
    )
