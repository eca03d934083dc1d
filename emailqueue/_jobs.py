"""The job function RQ runs, and the worker runtime it sends with.

A plain VM worker runs it::

    rq worker --with-scheduler --serializer json --url "$QUEUE_REDIS_URL" emails

RQ calls :func:`deliver` with the JSON payload. On a failed send the retry policy
(:mod:`._retry`) edits the job RQ is running (``rq.get_current_job()`` is that very object)
before the exception propagates, so RQ's own failure handling does the right thing. On a send
Resend accepted, the acceptance is recorded on the job (:meth:`._store.JobStore.accept`) before
RQ's success handling runs: a job whose acceptance is recorded is never sent again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import redis
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job

from ._events import record_sent, sent_emails
from ._exceptions import ConfigurationError, SendError
from ._outbox import OutboxClient
from ._payload import parse_payload
from ._ratelimit import RateLimiter, limiter_key
from ._resend import ResendClient, build_http_client
from ._retry import (
    apply_abandoned_policy,
    apply_failure_policy,
    keep_for_later,
    key_forgotten,
    outcome_unknown,
)
from ._send import Outcome, Sender, send
from ._settings import Settings, load_settings
from ._store import JobStore

log = logging.getLogger("emailqueue")


class WorkerRuntime:
    """The settings and Resend clients of one process (a worker, a drain, an immediate send),
    built on first use and reused.

    One client per configuration for the life of the process: warm serverless invocations reuse
    its connection pool (no new TLS handshake). :meth:`close` closes every client it built.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: tuple[Settings, Sender] | None = None
        self._clients: dict[tuple[str, str, float, float], ResendClient] = {}

    def configure(self, settings: Settings | None = None, client: Sender | None = None) -> None:
        """Use these settings and client; with no arguments, forget the configuration and close
        the clients built here."""
        if settings is None and client is None:
            self.close()
            return
        with self._lock:
            settings = settings or load_settings()
            self._current = (settings, client if client is not None else self._client_for(settings))

    def get(self) -> tuple[Settings, Sender]:
        """The configured settings and client, or ones read from the environment.

        Raises:
            ConfigurationError: no RESEND_API_KEY outside dev mode.
        """
        with self._lock:
            if self._current is None:
                settings = load_settings()
                self._current = (settings, self._client_for(settings))
            return self._current

    def client_for(self, settings: Settings, *, timeouts: tuple[float, float] | None = None) -> Sender:
        """A Resend client for ``settings``; in dev mode without a key, the local outbox.
        ``timeouts``: (connect, read) seconds instead of the settings' (immediate sends).

        Raises:
            ConfigurationError: no RESEND_API_KEY outside dev mode.
        """
        with self._lock:
            return self._client_for(settings, timeouts)

    def _client_for(self, settings: Settings, timeouts: tuple[float, float] | None = None) -> Sender:
        if settings.resend_api_key is None and settings.dev_mode:
            return OutboxClient(settings.emailqueue_outbox_dir)
        connect, read = timeouts or (settings.resend_connect_timeout_s, settings.resend_timeout_s)
        key = (settings.require_api_key(), settings.resend_api_url, connect, read)
        client = self._clients.get(key)
        if client is None:
            http = build_http_client(connect_timeout=key[2], read_timeout=key[3])
            client = self._clients[key] = ResendClient(http, api_key=key[0], base_url=key[1])
        return client

    def close(self) -> None:
        """Close every Resend client built here, and forget the configuration."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            self._current = None


#: This process's runtime (RQ calls :func:`deliver` by import path, so it is found here).
RUNTIME = WorkerRuntime()


def configure_worker(settings: Settings | None = None, client: Sender | None = None) -> None:
    """Set the settings and Resend client that :func:`deliver` uses in this process.

    A VM ``rq worker`` needs none of this: it reads the environment on its first job. Call it to
    run jobs in-process with your own ``httpx`` client (tests do), or with no arguments to
    forget a previous configuration and close the Resend clients it built.
    """
    RUNTIME.configure(settings, client)


def deliver(payload: dict[str, Any]) -> str:
    """RQ job function: send one email (or one batch chunk) through Resend, under the shared
    rate limit. Returns a one-line summary.

    Raises:
        SendError: the send failed; the job has been told whether and when to retry.
        ConfigurationError: RESEND_API_KEY is missing (the job is kept without spending an
            attempt; fix it and the email goes out).
    """
    job = get_current_job()
    try:
        settings, client = RUNTIME.get()
    except ConfigurationError as exc:
        if job is not None:
            keep_for_later(job, exc)
        raise
    if job is None:
        outcome = send_payload(payload, client, settings)
        return f"sent {outcome.sent}, rejected {len(outcome.rejected)}"
    store = JobStore(job.connection, job.origin, settings)
    if store.is_accepted(job.id):
        # Resend accepted this job before (its worker died, or RQ failed to finish it): done.
        store.accept(job.id, worker_name=job.worker_name or "", sent=0)
        log.warning("job %s: Resend already accepted it; not sent again", job.id)
        return "already accepted by Resend"
    limiter = RateLimiter(job.connection, limiter_key(job.origin), settings.resend_rate_limit)
    outcome = send_payload(payload, client, settings, job=job, limiter=limiter, store=store)
    store.accept(job.id, worker_name=job.worker_name or "", sent=outcome.sent)
    _record_sent(job, payload, outcome, settings)
    return f"sent {outcome.sent}, rejected {len(outcome.rejected)}"


def on_failure(
    job: Job, connection: redis.Redis, exc_type: type[BaseException] | None = None, *_: Any
) -> None:
    """``EmailJob``'s failure callback (its own, never one named in the job hash). RQ calls it as
    its StartedJobRegistry cleanup settles an execution whose worker died (``AbandonedJobError``),
    before it retries or fails that same job object (docs/PLATFORM.md, "RQ: abandoned jobs"):
    then :func:`settle_abandoned`. In the work horse, after a job raised, it does nothing: the
    retry policy has run already."""
    if exc_type is not None and issubclass(exc_type, AbandonedJobError):
        settle_abandoned(job)


def settle_abandoned(job: Job) -> None:
    """RQ is about to retry or fail ``job``, whose execution was abandoned (its worker or work
    horse died mid-send, maybe after Resend accepted it): set what RQ should do
    (:func:`._retry.apply_abandoned_policy`). An accepted job is finished by one more run; one
    with no attempts left is resent under its key while the key's window lasts."""
    try:
        settings = RUNTIME.get()[0]
    except ConfigurationError:
        settings = load_settings()  # no API key: the policy needs the backoff settings only
    store = JobStore(job.connection, job.origin, settings)
    apply_abandoned_policy(job, settings, accepted=store.is_accepted(job.id))


def _record_sent(job: Job, raw: Any, outcome: Outcome, settings: Settings) -> None:
    """The lifecycle's "sent" step with Resend's ids (one round trip). A Redis error here only
    loses that record: the email is sent and its acceptance recorded, so nothing is retried."""
    try:
        emails = sent_emails(job.id, parse_payload(raw), outcome.resend_ids)
        with job.connection.pipeline(transaction=False) as pipe:
            record_sent(pipe, emails, ttl=settings.email_events_ttl_s, now=time.time())
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("job %s: sent, but its lifecycle record failed (%r)", job.id, exc)


def _created_at(job: Job) -> float | None:
    return job.created_at.timestamp() if job.created_at else None


def send_payload(
    raw: Any,
    client: Sender,
    settings: Settings,
    *,
    job: Job | None = None,
    rng: random.Random | None = None,
    limiter: RateLimiter | None = None,
    store: JobStore | None = None,
) -> Outcome:
    """Parse ``raw``, send it, record rejected batch recipients, and on failure apply the retry
    policy to ``job``."""
    try:
        payload = parse_payload(raw)
        if job is not None and key_forgotten(job.meta, lambda: _created_at(job), time.time()):
            raise outcome_unknown(None)  # Resend may have forgotten its key: never send it again
        wait = (
            max(0.0, (job.timeout or settings.email_job_timeout_s) - settings.send_timeout_s) if job else 0.0
        )
        outcome = send(payload, client, limiter=limiter, wait=wait)
    except SendError as exc:
        if job is not None:
            recorded = apply_failure_policy(job, exc, settings, rng=rng)
            if recorded is not exc:
                raise recorded from exc  # outcome_unknown: what RQ logs and records as the reason
        raise
    if outcome.rejected and job is not None:
        (store or JobStore(job.connection, job.origin, settings)).record_rejected(payload, outcome.rejected)
    return outcome
