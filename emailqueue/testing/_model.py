"""Resend's email API as a model: validation, idempotency keys, batch modes, a per-team rate
limit and the faults a delivery path must survive, with no server attached.

:class:`ResendModel` answers requests given as (method, path, headers, body). Serve it over HTTP
with :class:`emailqueue.testing.FakeResend`, or in-process with :meth:`ResendModel.transport`
(an ``httpx.MockTransport``). The behaviour follows docs/PLATFORM.md, "Resend".
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import httpx

from ._suppressions import PREFIX as SUPPRESSIONS
from ._suppressions import SuppressionList
from ._wire import (
    BATCH,
    DEFAULT_RATE_LIMIT,
    EMAILS,
    MAX_BATCH,
    AcceptedEmail,
    Call,
    Gate,
    RecordedRequest,
    Reply,
    error_reply,
    json_reply,
    parse_call,
    problem_of,
    retry_headers,
)

__all__ = ["AcceptedEmail", "Gate", "RecordedRequest", "ResendModel"]


class ResendModel:
    """Resend's email API as a model: it answers a request (:meth:`handle`), records what it
    accepted, and injects faults. Thread-safe; every record returns a copy. It serves nothing by
    itself: :class:`FakeResend` serves it over HTTP, and :meth:`transport` in-process to httpx.

    Args:
        api_key: the only key accepted in ``Authorization: Bearer <key>``.
        latency: seconds to wait before every reply (settable later).
        rate_limit: requests/s allowed across all keys, over a sliding 1 s window
            (rounded down, at least 1); None for no limit (settable later).
        clock: monotonic seconds, for the rate-limit window (tests pass their own).
    """

    def __init__(
        self,
        *,
        api_key: str = "re_test_fake",
        latency: float = 0.0,
        rate_limit: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.clock = clock
        self.latency = latency
        self.rate_limit = rate_limit
        self.reject_recipients: set[str] = set()  # test hook: emails to any of these are invalid
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # set: every wait is cut short (the server stops)
        self._last_gate = Gate()
        self._clear()

    def _clear(self) -> None:
        self._requests: list[RecordedRequest] = []
        self._accepted: list[AcceptedEmail] = []
        self._accepts_by_key: Counter[str] = Counter()
        self._replays = 0
        self._cache: dict[str, tuple[str, Reply]] = {}  # key -> (fingerprint, original reply)
        self._in_flight: set[str] = set()
        self._failures: deque[Reply] = deque()
        self._late: deque[float] = deque()
        self._drops = 0
        self._gates: deque[Gate] = deque()
        self._issued: list[Gate] = []
        self._error_rates: tuple[float, float, float, float] | None = None
        self._rng = random.Random(0)
        self._window: deque[float] = deque()
        #: Resend's suppression list: ``suppressions.add(address, origin)`` puts one on it; an
        #: email accepted for a listed address gets ``email.suppressed``, never ``delivered``.
        self.suppressions = SuppressionList()

    # --- record ---
    @property
    def accepted(self) -> list[AcceptedEmail]:
        """Every email accepted ("sent"), in order, once each."""
        with self._lock:
            return list(self._accepted)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every HTTP request, in the order it was answered (after any delay)."""
        with self._lock:
            return list(self._requests)

    @property
    def replays(self) -> int:
        """How many requests were answered from the idempotency cache."""
        with self._lock:
            return self._replays

    def accepted_count_by_key(self) -> dict[str, int]:
        """Idempotency key -> how many requests were accepted under it (a batch counts once)."""
        with self._lock:
            return dict(self._accepts_by_key)

    def emit_webhooks(
        self,
        url: str,
        secret: str,
        *,
        bounce: Iterable[str] = (),
        complain: Iterable[str] = (),
        client: httpx.Client | None = None,
    ) -> list[httpx.Response]:
        """POST correctly signed (Svix) webhooks to ``url`` for every email accepted so far:
        ``email.sent`` then ``email.delivered``, or a permanent ``email.bounced`` for an address in
        ``bounce``, and ``email.complained`` after delivery for one in ``complain``. An email to an
        address on :attr:`suppressions` gets ``email.suppressed`` instead, as Resend skips it.

        Args:
            secret: the webhook's signing secret, ``whsec_<base64>``.
            client: the ``httpx.Client`` to post with (e.g. a FastAPI ``TestClient``).

        Returns:
            The responses, in order.
        """
        from ._webhooks import emit_webhooks

        return emit_webhooks(
            url,
            secret,
            self.accepted,
            bounce=bounce,
            complain=complain,
            suppressed=[e["email"] for e in self.suppressions.entries()],
            client=client,
        )

    def reset(self) -> None:
        """Forget the record, idempotency cache, rate window and faults; release held requests."""
        self._release_gates()
        with self._lock:
            self.reject_recipients = set()
            self._clear()

    # --- fault injection ---
    def fail_next(
        self, n: int, status: int, name: str, message: str = "injected", retry_after: float | None = None
    ) -> None:
        """Answer the next ``n`` API requests with this error (429s carry retry-after and ratelimit-*)."""
        reply = error_reply(status, name, message, retry_headers(status, retry_after, self._limit()))
        with self._lock:
            self._failures.extend([reply] * n)

    def timeout_after_accept(self, n: int, delay: float) -> None:
        """Accept (and cache) the next ``n`` valid requests, then wait ``delay`` s before replying."""
        with self._lock:
            self._late.extend([delay] * n)

    def drop_after_accept(self, n: int) -> None:
        """Accept (and cache) the next ``n`` valid requests, then close the connection without a
        reply: the client sees the connection drop after its request went out (over HTTP a
        ``RemoteProtocolError``; :meth:`transport` raises the same)."""
        with self._lock:
            self._drops += n

    def hold(self) -> Gate:
        """Hold the next request that would be processed (after auth, faults, rate limit and the
        idempotency checks, before it is accepted) until the returned gate is released."""
        gate = Gate()
        with self._lock:
            self._gates.append(gate)
            self._issued.append(gate)
            self._last_gate = gate
        return gate

    @property
    def held(self) -> threading.Event:
        """Set once a request waits at the gate most recently made by :meth:`hold`."""
        return self._last_gate.arrived

    def set_error_rate(
        self,
        *,
        p500: float = 0,
        p429: float = 0,
        p_timeout: float = 0,
        timeout_delay: float = 1.0,
        seed: int = 0,
    ) -> None:
        """Fail API requests at random, drawing once per request from a ``seed``-ed generator.

        ``p_timeout``: accept the email, then reply ``timeout_delay`` seconds late.
        """
        if min(p500, p429, p_timeout) < 0 or p500 + p429 + p_timeout > 1:
            raise ValueError("error rates must be >= 0 and sum to at most 1")
        with self._lock:
            self._error_rates = (p500, p429, p_timeout, timeout_delay)
            self._rng = random.Random(seed)

    # --- serving (runs on each request's thread) ---
    def _limit(self) -> int:
        return DEFAULT_RATE_LIMIT if self.rate_limit is None else max(1, int(self.rate_limit))

    def _release_gates(self) -> None:
        with self._lock:
            for gate in self._issued:
                gate.release()

    def transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` answering from this model, for in-process tests::

        http = httpx.Client(transport=model.transport())
        client = ResendClient(http, api_key=model.api_key)
        """

        def answer(request: httpx.Request) -> httpx.Response:
            headers = {name.lower(): value for name, value in request.headers.items()}
            query = request.url.query.decode()
            reply = self.handle(request.method, request.url.path, headers, request.read(), query)
            if reply.drop:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
            return httpx.Response(
                reply.status,
                headers=[*reply.headers, ("content-type", "application/json")],
                content=reply.body,
            )

        return httpx.MockTransport(answer)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes, query: str = "") -> Reply:
        """Answer one request (header names lower-cased) as Resend would, faults included."""
        if path == SUPPRESSIONS or path.startswith(SUPPRESSIONS + "/"):
            reply = self._auth(headers) or self.suppressions.handle(method, path, query, body)
            with self._lock:
                self._requests.append(RecordedRequest(method, path, headers, body, reply.status))
            return reply
        claimed: str | None = None  # the idempotency key this request holds in flight
        pause = self.latency
        try:
            checked = self._check(method, path, headers, body)
            if isinstance(checked, Reply):
                reply = checked
            elif (refused := self._claim(checked)) is not None:
                reply = refused
            else:
                claimed = checked.key
                # A slow server is slow before it commits, with the key in flight meanwhile.
                self._stopping.wait(pause)
                pause = 0.0
                reply = self._process(checked)
            self._stopping.wait(pause + reply.delay)  # a late reply also keeps the key in flight
        finally:
            if claimed is not None:
                with self._lock:
                    self._in_flight.discard(claimed)
        with self._lock:
            self._requests.append(
                RecordedRequest(method, path, headers, body, 0 if reply.drop else reply.status)
            )
        return reply

    def _check(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply | Call:
        """Route, authenticate, inject faults, rate-limit and parse."""
        refused = self._route_and_auth(method, path, headers)
        if refused is not None:
            return refused
        with self._lock:
            late = self._inject()
            if isinstance(late, Reply):
                return late
            limited = self._rate_limited()
        if limited is not None:
            return limited
        return parse_call(path, headers, body, late)

    def _route_and_auth(self, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        if path not in (EMAILS, BATCH):
            return error_reply(404, "not_found", "The requested endpoint does not exist.")
        if method not in ("POST", "GET") or (method == "GET" and path != EMAILS):
            return error_reply(405, "method_not_allowed", "Method is not allowed for the requested path.")
        refused = self._auth(headers)
        if refused is not None:
            return refused
        if method == "GET":
            return self._listing()
        return None

    def _auth(self, headers: dict[str, str]) -> Reply | None:
        auth = headers.get("authorization")
        if not auth:
            return error_reply(401, "missing_api_key", "Missing API key; send `Authorization: Bearer <key>`.")
        if auth != f"Bearer {self.api_key}":
            return error_reply(403, "invalid_api_key", "API key is invalid.")
        if not headers.get("user-agent"):
            return error_reply(403, "missing_user_agent", "A User-Agent header is required.")
        return None

    def _listing(self) -> Reply:
        """``GET /emails``: what was accepted, oldest first (for a person running the fake)."""
        with self._lock:
            data = [
                {"id": e.id, "to": e.to, "subject": e.payload.get("subject"), "batch": e.batch}
                for e in self._accepted
            ]
        return json_reply(200, {"object": "list", "data": data})

    def _inject(self) -> Reply | float:
        """An injected failure, or the reply delay a seeded ``p_timeout`` drew (under the lock)."""
        if self._failures:
            return self._failures.popleft()
        if self._error_rates is None:
            return 0.0
        p500, p429, p_timeout, delay = self._error_rates
        roll = self._rng.random()
        if roll < p500:
            return error_reply(500, "internal_server_error", "injected random failure")
        if roll < p500 + p429:
            headers_429 = retry_headers(429, None, self._limit())
            return error_reply(429, "rate_limit_exceeded", "injected random rate limit", headers_429)
        return delay if roll < p500 + p429 + p_timeout else 0.0

    def _rate_limited(self) -> Reply | None:
        """A 429 if this request is over the limit in the sliding 1 s window (under the lock)."""
        if self.rate_limit is None:
            return None
        now = self.clock()
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        if len(self._window) >= self._limit():
            message = f"Too many requests: the limit is {self._limit()} per second."
            return error_reply(429, "rate_limit_exceeded", message, retry_headers(429, 1, self._limit()))
        self._window.append(now)
        return None

    def _claim(self, call: Call) -> Reply | None:
        """Take the call's idempotency key: None if taken, else the reply that refuses or replays."""
        if call.key is None:
            return None
        with self._lock:
            if call.key in self._in_flight:
                message = "Another request with this Idempotency-Key is in progress; retry it later."
                return error_reply(409, "concurrent_idempotent_requests", message)
            if call.key in self._cache:
                fingerprint, original = self._cache[call.key]
                if fingerprint != call.fingerprint:
                    message = "This Idempotency-Key was already used with a different request body."
                    return error_reply(409, "invalid_idempotent_request", message)
                self._replays += 1
                return original
            self._in_flight.add(call.key)
            return None

    def _process(self, call: Call) -> Reply:
        """Hold (if a gate is armed), validate and accept a call that holds its key."""
        with self._lock:
            gate = self._gates.popleft() if self._gates else None
            rejected = frozenset(self.reject_recipients)
        if gate is not None:
            gate.arrived.set()
            gate.wait_for_release()
        plan = self._plan_single if call.path == EMAILS else self._plan_batch
        planned = plan(call, rejected)
        if isinstance(planned, Reply):
            return planned
        emails, obj = planned
        reply = json_reply(200, obj)
        with self._lock:
            late = self._late.popleft() if self._late else call.late
            drop = self._drops > 0
            self._drops -= 1 if drop else 0
            self._accepted.extend(emails)
            if call.key is not None:
                self._cache[call.key] = (call.fingerprint, reply)
                self._accepts_by_key[call.key] += 1
        return replace(reply, delay=late, drop=drop)

    def _plan_single(self, call: Call, rejected: frozenset[str]) -> Reply | tuple[list[AcceptedEmail], Any]:
        problem = problem_of(call.data, rejected)
        if problem is not None:
            return error_reply(422, *problem)
        email = AcceptedEmail(str(uuid.uuid4()), call.key, call.data, call.headers, batch=False)
        return [email], {"id": email.id}

    def _plan_batch(self, call: Call, rejected: frozenset[str]) -> Reply | tuple[list[AcceptedEmail], Any]:
        items = call.data
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            return error_reply(
                422, "validation_error", f"A batch must be a JSON array of 1-{MAX_BATCH} emails."
            )
        mode = call.headers.get("x-batch-validation", "strict")
        if mode not in ("strict", "permissive"):
            return error_reply(
                422, "validation_error", "x-batch-validation must be `strict` or `permissive`."
            )
        for index, item in enumerate(items):
            for name in ("attachments", "scheduled_at"):
                if isinstance(item, dict) and name in item:
                    message = f"emails[{index}]: `{name}` is not allowed in a batch."
                    return error_reply(422, "validation_error", message)
        emails: list[AcceptedEmail] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            problem = problem_of(item, rejected)
            if problem is None:
                emails.append(AcceptedEmail(str(uuid.uuid4()), call.key, item, call.headers, True, index))
            elif mode == "strict":
                return error_reply(422, problem[0], f"emails[{index}]: {problem[1]}")
            else:
                errors.append({"index": index, "message": problem[1]})
        obj: dict[str, Any] = {"data": [{"id": email.id} for email in emails]}
        if mode == "permissive":
            obj["errors"] = errors
        return emails, obj
