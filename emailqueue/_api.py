"""The public calls: :func:`send_email` and :func:`send_event_email`."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import replace
from typing import Any

import redis
from rq import Queue

from ._enqueue import (
    PreparedJob,
    dedup_digest,
    dedup_key,
    normalized_recipient,
    prepare_batch,
    prepare_single,
    resolve_queue,
    suppressed_error,
    write_jobs,
)
from ._events import digest
from ._exceptions import FieldProblem, InvalidEmailError, QueueError
from ._message import EmailMessage, build_message, check_address
from ._payload import MAX_BATCH
from ._settings import Settings, load_settings
from ._suppress import address_digests

log = logging.getLogger("emailqueue")


class QueuedJobs(list[str]):
    """The job ids :func:`send_event_email` queued; ``suppressed``: how many recipients it left
    out because they are on the suppression list."""

    def __init__(self, ids: list[str], *, suppressed: int = 0) -> None:
        super().__init__(ids)
        self.suppressed = suppressed


def send_email(
    message: EmailMessage | None = None,
    *,
    idempotency_key: str | None = None,
    connection: redis.Redis | None = None,
    queue: Queue | None = None,
    settings: Settings | None = None,
    now: bool = False,
    allow_suppressed: bool = False,
    durable: bool | None = None,
    **fields: Any,
) -> str:
    """Validate one email and queue it for delivery. Returns the RQ job id.

    Args:
        message: an :class:`EmailMessage`; or pass its fields as keywords instead
            (``to=``, ``subject=``, ``html=``, ``text=``, ``from_=``, ``cc=``, ...).
        idempotency_key: your own key for this email (an order id, say). A second call with the
            same key queues nothing and returns the same job id, for as long as
            ``EMAIL_DEDUP_TTL_S``. Without it every call queues a new email.
        connection: the Redis connection to use; default: one from ``QUEUE_REDIS_URL``.
        queue: the RQ queue to use (overrides ``connection``).
        settings: settings to use instead of reading the environment.
        now: also send it right away, from this process, for email a person is waiting for (a
            sign-in link). The job is written first, then claimed and sent here with a short
            timeout; if that cannot happen (no free send slot, a Resend error, a crash), the
            queue delivers it as usual. Needs ``RESEND_API_KEY`` here. See docs/SEND_NOW.md.
        allow_suppressed: queue it even if a recipient is on the suppression list (Resend will
            still skip that recipient unless it was removed from Resend's list meanwhile).
        durable: return only once Redis has the email on disk (``appendfsync always``, confirmed
            with ``WAITAOF``) or on a replica (``WAIT``), so a crash of the Redis host cannot lose
            it; default ``EMAIL_DURABLE``.
            With ``now``, the durable write comes first, then the claim and the send.
            See docs/RELIABILITY.md.

    Returns:
        The job id. Delivery uses an Idempotency-Key derived from it on every attempt.

    Raises:
        InvalidEmailError: the message is invalid; every problem is listed and nothing is queued.
        SuppressedAddressError: a recipient (to, cc, bcc) is on the suppression list mirrored
            from Resend; the error names its origin (bounce, complaint, manual). Nothing is queued.
        ConfigurationError: no Redis URL, or an invalid setting (with ``now``: no Resend key;
            with ``durable``: a server that cannot confirm a write on disk or on a replica,
            before anything is written).
        QueueError: Redis could not be reached after bounded retries (with ``durable``: or did
            not confirm the write within ``EMAIL_DURABLE_TIMEOUT_S``; the email is queued).
    """
    _check_call(message, fields)
    settings = settings or load_settings()
    email = build_message(message if message is not None else fields, default_from=settings.email_from)
    dedup = _dedup_of(idempotency_key)
    q = resolve_queue(settings, connection, queue)
    job = prepare_single(email, queue=q, settings=settings, dedup=dedup)
    if not allow_suppressed:
        recipients = [*email.to, *(email.cc or []), *(email.bcc or [])]
        job = replace(job, checks=address_digests(recipients), recipients=tuple(recipients))
    settings = _with_durable(settings, durable)
    if now and not settings.email_durable:
        from . import _now  # imported on first use: an app that only queues never pays for it

        return _now.send_now(q, job, settings)
    return _write_single(q, job, settings, now=now)


def _check_call(message: EmailMessage | None, fields: dict[str, Any]) -> None:
    if message is not None and fields:
        raise TypeError("pass either an EmailMessage or keyword fields, not both")
    if message is not None and not isinstance(message, EmailMessage):
        raise TypeError(
            f"send_email takes an EmailMessage or keyword fields (to=..., subject=...), "
            f"not a {type(message).__name__}"
        )


def _dedup_of(idempotency_key: str | None) -> list[str] | None:
    """The dedup identity of a caller's ``idempotency_key`` (None: no key, a random job id)."""
    if idempotency_key is None:
        return None
    if not _is_text(idempotency_key, 200):
        raise InvalidEmailError(
            [FieldProblem("idempotency_key", "must be a UTF-8 string of 1-200 characters")]
        )
    return ["key", idempotency_key]


def _write_single(q: Queue, job: PreparedJob, settings: Settings, *, now: bool) -> str:
    """Write one job through the enqueue script (durable if the settings say so); with ``now``,
    then claim it from the queue and send it from here."""
    if now:
        from ._now_attempt import now_client

        now_client(settings)  # without a Resend key, fail before anything is written
    # A taken key: already queued. Durable: confirmed on disk or on a replica before it returns.
    written = write_jobs(
        q.connection, q, [job], settings.email_dedup_ttl_s, durable_timeout=_durable_timeout(settings)
    )
    if written.suppressed:
        raise suppressed_error(job, written.suppressed)
    if now:  # durable first, then claimed from the queue and sent from here
        from . import _now

        return _now.send_queued_now(q, [job.job_id], settings)[0]
    return job.job_id


def _with_durable(settings: Settings, durable: bool | None) -> Settings:
    """``durable=`` overrides ``EMAIL_DURABLE`` for one call."""
    if durable is None or durable == settings.email_durable:
        return settings
    return settings.model_copy(update={"email_durable": bool(durable)})


def _durable_timeout(settings: Settings) -> float | None:
    return settings.email_durable_timeout_s if settings.email_durable else None


def send_event_email(
    event_id: str,
    recipients: list[str],
    subject: str,
    *,
    html: str | None = None,
    text: str | None = None,
    connection: redis.Redis | None = None,
    queue: Queue | None = None,
    settings: Settings | None = None,
    now: bool = False,
    allow_suppressed: bool = False,
    durable: bool | None = None,
    **fields: Any,
) -> QueuedJobs:
    """Queue one personal email per recipient of an event (no recipient sees another).

    Deduplicated per (event, recipient): calling it again for the same event queues nothing for
    recipients already queued or delivered, for ``EMAIL_DEDUP_TTL_S`` (default 7 days).

    Args:
        event_id: what the emails announce (a stable id of yours, e.g. ``"launch-2026-12"``).
        recipients: addresses; duplicates (case-insensitive) are sent once.
        subject, html, text: the content, the same for every recipient.
        connection, queue, settings: as for :func:`send_email`.
        now: also send right away from this process, as for :func:`send_email`; for small
            fan-outs only: at most 100 recipients (one batch request).
        allow_suppressed: also queue recipients on the suppression list mirrored from Resend
            (by default they are left out, and counted in the result's ``suppressed``).
        durable: as for :func:`send_email`: every write of the call is confirmed on disk or on
            a replica before it returns (and before the immediate sends, with ``now``).
        **fields: other :class:`EmailMessage` fields (``from_``, ``reply_to``, ``tags``, ...).

    Returns:
        The ids of the jobs queued by this call: one per chunk of up to 100 recipients, sent with
        one ``POST /emails/batch`` each, or one per recipient when the email has attachments or
        ``send_at`` (Resend's batch endpoint takes neither). Recipients already queued or sent
        for this event are left out, and so are suppressed recipients: their count is the
        returned list's ``suppressed`` attribute.

    Raises:
        InvalidEmailError: any recipient or field is invalid; nothing is queued for anyone.
        ConfigurationError, QueueError: as for :func:`send_email`.
    """
    settings = _with_durable(settings or load_settings(), durable)
    limit = MAX_NOW_RECIPIENTS if now else MAX_EVENT_RECIPIENTS
    unique, template = _event_message(event_id, recipients, subject, html, text, fields, settings, limit)
    if now:
        from ._now_attempt import now_client

        now_client(settings)  # without a Resend key, fail before anything is written
    q = resolve_queue(settings, connection, queue)
    batchable = not template.attachments and template.send_at is None and settings.email_batch
    pending = {
        normalized: template.model_copy(update={"to": [address]}) for normalized, address in unique.items()
    }
    queued, skipped = _write_event(pending, batchable, q, settings, event_id, not allow_suppressed)
    if skipped:
        log.warning("send_event_email %r: %d suppressed recipient(s) left out", event_id, skipped)
    if now:
        from . import _now

        return QueuedJobs(_now.send_queued_now(q, queued, settings), suppressed=skipped)
    return QueuedJobs(queued, suppressed=skipped)


def _event_message(
    event_id: str,
    recipients: list[str],
    subject: str,
    html: str | None,
    text: str | None,
    fields: dict[str, Any],
    settings: Settings,
    limit: int,
) -> tuple[dict[str, str], EmailMessage]:
    """The unique recipients (normalized -> as given) and the message every one of them gets.

    Raises:
        InvalidEmailError: every problem found, at once.
    """
    problems: list[FieldProblem] = []
    if not _is_text(event_id, 200) or not event_id.strip():
        problems.append(
            FieldProblem("event_id", "must be a non-empty UTF-8 string of at most 200 characters")
        )
    unique = _unique_recipients(recipients, problems, limit)
    template: EmailMessage | None = None
    if unique or not problems:
        content = {"subject": subject, "html": html, "text": text, **fields}
        try:
            template = build_message(
                {"to": next(iter(unique.values()), "x@example.com"), **content},
                default_from=settings.email_from,
            )
        except InvalidEmailError as exc:
            problems += [p for p in exc.problems if not p.field.startswith("to")]
    if problems or template is None:
        raise InvalidEmailError(problems)
    return unique, template


def _unique_recipients(recipients: Any, problems: list[FieldProblem], limit: int) -> dict[str, str]:
    """normalized address -> the address as given, first one wins; bad ones go to ``problems``.

    Raises:
        InvalidEmailError: more than ``limit`` (nothing else is checked).
    """
    if not isinstance(recipients, list | tuple) or not recipients:
        problems.append(FieldProblem("recipients", "must be a non-empty list of addresses"))
        return {}
    if len(recipients) > limit:
        fix = (
            f"now=True takes at most {limit} (one batch request). Drop now=True for larger "
            "fan-outs: the queue sends them"
            if limit == MAX_NOW_RECIPIENTS
            else f"one call takes at most {limit}. Split the list: calls for the same event are "
            "deduplicated per recipient"
        )
        raise InvalidEmailError([FieldProblem("recipients", f"has {len(recipients)} addresses; {fix}")])
    unique: dict[str, str] = {}
    for i, address in enumerate(recipients):
        try:
            unique.setdefault(normalized_recipient(check_address(address)), address)
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(FieldProblem(f"recipients[{i}]", str(exc) or "must be an address string"))
    return unique


def _write_event(
    pending: dict[str, EmailMessage],
    batchable: bool,
    q: Queue,
    settings: Settings,
    event_id: str,
    check: bool = True,
) -> tuple[list[str], int]:
    """Write the jobs of ``pending`` recipients; those another call already queued for this event
    are left out, and the rest written again, for at most :data:`MAX_WRITE_ROUNDS` rounds. With
    ``check``, suppressed recipients are left out the same way (found by the write itself).
    Returns (the ids queued, how many recipients were suppressed)."""
    queued: list[str] = []
    suppressed = 0
    token = uuid.uuid4().hex
    for _ in range(MAX_WRITE_ROUNDS):
        jobs = _plan(pending, batchable, q, settings, event_id)
        if check and jobs:
            # The write checks every pending recipient: one HMGET in its own round trip.
            jobs[0] = replace(jobs[0], checks=address_digests(list(pending)))
        hits: dict[str, str] = {}
        taken, pending = _write_round(jobs, pending, q, settings, event_id, token, queued, hits)
        if hits:
            kept = {n: m for n, m in pending.items() if digest(n) not in hits}
            suppressed += len(pending) - len(kept)
            pending = kept
            continue
        if not taken:
            return queued, suppressed
        # Some recipients are already queued or sent for this event: leave them out, go again.
        pending = {n: m for n, m in pending.items() if _guard(q, event_id, n) not in taken}
    raise QueueError("send_event_email: the recipients kept changing under concurrent calls; try again")


def _write_round(
    jobs: list[PreparedJob],
    pending: dict[str, EmailMessage],
    q: Queue,
    settings: Settings,
    event_id: str,
    token: str,
    queued: list[str],
    hits: dict[str, str],
) -> tuple[dict[str, str], dict[str, EmailMessage]]:
    """One round: one atomic write if it fits Upstash's request limit, otherwise several, each
    atomic. Appends what it queued to ``queued``; returns (markers taken by another call, the
    recipients still pending)."""
    for group in _write_groups(jobs):
        result = write_jobs(
            q.connection,
            q,
            group,
            settings.email_dedup_ttl_s,
            token,
            durable_timeout=_durable_timeout(settings),
        )
        if result.suppressed:
            hits.update(result.suppressed)  # nothing of this group was written
            return {}, pending
        if result.taken:
            # Markers holding our own token were set by an earlier attempt of this very call
            # (a request redis-py retried after losing the reply): those jobs are queued.
            ours = {guard for guard, holder in result.taken.items() if holder == token}
            queued += [job.job_id for job in group if job.guards and set(job.guards) <= ours]
            return result.taken, pending
        queued += result.queued
        done = {key for job in group for key in job.guards}
        pending = {n: m for n, m in pending.items() if _guard(q, event_id, n) not in done}
    return {}, pending


def _guard(queue: Queue, event_id: str, normalized: str) -> str:
    return dedup_key(dedup_digest(queue.name, "event", event_id, normalized), queue)


#: Upstash takes at most 10 MB per request (docs/PLATFORM.md): one enqueue script call carries at
#: most this much job data, and one chunk job at most a quarter of it.
WRITE_BUDGET_BYTES = 8 * 1024 * 1024
CHUNK_BUDGET_BYTES = WRITE_BUDGET_BYTES // 4


def _write_groups(jobs: list[PreparedJob]) -> list[list[PreparedJob]]:
    groups: list[list[PreparedJob]] = [[]]
    size = 0
    for job in jobs:
        job_size = sum(len(v) if isinstance(v, bytes | str) else 8 for v in job.mapping.values())
        if groups[-1] and size + job_size > WRITE_BUDGET_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(job)
        size += job_size
    return groups


#: ``send_event_email(now=True)`` sends from the caller: one batch request at most.
MAX_NOW_RECIPIENTS = 100

#: The most recipients one send_event_email call takes (its writes must stay small for Redis).
MAX_EVENT_RECIPIENTS = 10_000


def _is_text(value: object, longest: int) -> bool:
    """A str of 1..longest characters that encodes to UTF-8 (no lone surrogates)."""
    if not isinstance(value, str) or not 1 <= len(value) <= longest:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Each round drops the recipients another call already queued, so this is rarely more than 2.
MAX_WRITE_ROUNDS = 5


def _plan(
    pending: dict[str, EmailMessage], batchable: bool, queue: Queue, settings: Settings, event_id: str
) -> list[PreparedJob]:
    """Chunk jobs of up to 100 personal emails, or one job per recipient when the message cannot
    go through Resend's batch endpoint (attachments, send_at) or there is only one recipient."""
    items = list(pending.items())
    if batchable and len(items) > 1:
        # Up to 100 a chunk (Resend's batch limit), fewer when each email is big, so that a chunk
        # job stays well under Upstash's request limit.
        per_email = len(json.dumps(items[0][1].to_resend(settings.email_from)).encode()) + 64
        size = max(1, min(MAX_BATCH, CHUNK_BUDGET_BYTES // per_email))
        return [
            prepare_batch(items[i : i + size], queue=queue, settings=settings, event_id=event_id)
            for i in range(0, len(items), size)
        ]
    return [
        prepare_single(
            message, queue=queue, settings=settings, dedup=["event", event_id, n], event_id=event_id
        )
        for n, message in items
    ]
