"""A local fake of Resend's email API, for tests and local development.

It serves ``POST /emails`` and ``POST /emails/batch`` on 127.0.0.1 with the behaviour listed
in docs/PLATFORM.md (Resend): Bearer auth, the required User-Agent, validation, idempotency
keys, batch validation modes and a per-team rate limit. It records what it accepted, and it
injects the faults a delivery path must survive: error replies, replies lost after the email
was accepted, requests held in flight, and seeded random failures.

    with FakeResend() as fake:
        headers = {"Authorization": f"Bearer {fake.api_key}"}
        httpx.post(f"{fake.url}/emails", json=email, headers=headers)
        assert [e.to for e in fake.accepted] == [["ada@example.com"]]

``python -m emailqueue.testing._fake_resend --port 8025`` serves one until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

EMAILS, BATCH = "/emails", "/emails/batch"
MAX_RECIPIENTS = 50  # `to`: a string or 1-50 addresses
MAX_BATCH = 100
MAX_KEY_LENGTH = 256  # Idempotency-Key: 1-256 characters
DEFAULT_RATE_LIMIT = 2  # recorded replies show `ratelimit-limit: 2`
_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class AcceptedEmail:
    """One email the fake accepted, i.e. "sent".

    ``idempotency_key`` is the request's Idempotency-Key (for a batch item, the batch's key);
    ``headers`` are the HTTP request's headers, names lower-cased; ``batch_index`` is the
    email's position in its batch, or None when it came through ``/emails``.
    """

    id: str
    idempotency_key: str | None
    payload: dict[str, Any]
    headers: dict[str, str]
    batch: bool
    batch_index: int | None = None

    @property
    def to(self) -> list[str]:
        to = self.payload["to"]
        return [to] if isinstance(to, str) else list(to)

    @property
    def subject(self) -> str:
        return str(self.payload["subject"])


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the fake answered, with the status it replied (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class Gate:
    """Holds one request in flight, before it is accepted; made by :meth:`FakeResend.hold`."""

    def __init__(self) -> None:
        self.arrived = threading.Event()  # set once a request is waiting here
        self._released = threading.Event()

    def release(self) -> None:
        """Let the held request (or the one still to come) go on."""
        self._released.set()

    set = release  # so a Gate can stand where a plain threading.Event is expected

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # extra seconds before the reply is written (a reply lost after accept)


@dataclass(frozen=True)
class _Call:
    """A routed, authenticated, parsed request, ready to be processed."""

    path: str
    headers: dict[str, str]
    data: Any
    key: str | None
    late: float  # reply delay drawn by set_error_rate's p_timeout; applies only if accepted

    @property
    def fingerprint(self) -> str:
        return self.path + json.dumps(self.data, sort_keys=True, separators=(",", ":"))


def _json(status: int, obj: object, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, json.dumps(obj).encode(), headers)


def _error(status: int, name: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _json(status, {"statusCode": status, "name": name, "message": message}, headers)


def _retry_headers(status: int, retry_after: float | None, limit: int) -> tuple[tuple[str, str], ...]:
    if status == 429 and retry_after is None:
        retry_after = 1.0
    if retry_after is None:
        return ()
    seconds = str(int(retry_after)) if retry_after == int(retry_after) else str(retry_after)
    headers = [("retry-after", seconds)]
    if status == 429:
        reset = str(max(1, math.ceil(retry_after)))
        headers += [("ratelimit-limit", str(limit)), ("ratelimit-remaining", "0")]
        headers += [("ratelimit-reset", reset), ("ratelimit-policy", f"{limit};w=1")]
    return tuple(headers)


def _is_tag(tag: dict[str, Any]) -> bool:
    return all(isinstance(tag.get(k), str) and _TAG.fullmatch(tag[k]) for k in ("name", "value"))


def _problem(email: object, rejected: frozenset[str]) -> tuple[str, str] | None:
    """Why Resend would refuse ``email``, as (error name, message); None if it is valid."""
    if not isinstance(email, dict):
        return "validation_error", "An email must be a JSON object."
    for name in ("from", "to", "subject"):
        if email.get(name) in (None, "", []):
            return "missing_required_field", f"The `{name}` field is missing."
    if not email.get("html") and not email.get("text"):
        return "missing_required_field", "The `html` or `text` field is missing; give at least one."
    for name in ("from", "subject"):
        if not isinstance(email[name], str):
            return "validation_error", f"The `{name}` field must be a string."
    to = email["to"]
    to = [to] if isinstance(to, str) else to
    if not (isinstance(to, list) and 1 <= len(to) <= MAX_RECIPIENTS and all(isinstance(a, str) for a in to)):
        return "validation_error", f"The `to` field must be an address or 1-{MAX_RECIPIENTS} addresses."
    tags = email.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, dict) and _is_tag(t) for t in tags):
        return "validation_error", "Each tag needs a `name` and `value` of ASCII letters, digits, _ or -."
    if rejected.intersection(to):
        return "validation_error", "invalid recipient"
    return None


class FakeResend:
    """A Resend API on 127.0.0.1, in a daemon thread. Thread-safe; every record returns a copy.

    Args:
        api_key: the only key accepted in ``Authorization: Bearer <key>``.
        host, port: where to listen; port 0 picks a free port (see :attr:`url`).
        latency: seconds to wait before every reply (settable later).
        rate_limit: requests/s allowed across all keys, over a sliding 1 s window
            (rounded down, at least 1); None for no limit (settable later).
    """

    def __init__(
        self,
        *,
        api_key: str = "re_test_fake",
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        rate_limit: float | None = None,
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        self.rate_limit = rate_limit
        self.reject_recipients: set[str] = set()  # test hook: emails to any of these are invalid
        self._address = (host, port)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._last_gate = Gate()
        self._clear()

    def _clear(self) -> None:
        self._requests: list[RecordedRequest] = []
        self._accepted: list[AcceptedEmail] = []
        self._accepts_by_key: Counter[str] = Counter()
        self._replays = 0
        self._cache: dict[str, tuple[str, _Reply]] = {}  # key -> (fingerprint, original reply)
        self._in_flight: set[str] = set()
        self._failures: deque[_Reply] = deque()
        self._late: deque[float] = deque()
        self._gates: deque[Gate] = deque()
        self._issued: list[Gate] = []
        self._error_rates: tuple[float, float, float, float] | None = None
        self._rng = random.Random(0)
        self._window: deque[float] = deque()

    # --- lifecycle ---
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeResend is not running; call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeResend:
        if self._server is not None:
            raise RuntimeError("FakeResend is already running")
        self._stopping.clear()
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeResend", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; held requests are released and pending delays cut short."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        self._release_gates()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeResend:
        return self if self._server is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: TracebackType | None) -> None:
        self.stop()

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
        reply = _error(status, name, message, _retry_headers(status, retry_after, self._limit()))
        with self._lock:
            self._failures.extend([reply] * n)

    def timeout_after_accept(self, n: int, delay: float) -> None:
        """Accept (and cache) the next ``n`` valid requests, then wait ``delay`` s before replying."""
        with self._lock:
            self._late.extend([delay] * n)

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

    def _serve(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Reply:
        claimed: str | None = None  # the idempotency key this request holds in flight
        pause = self.latency
        try:
            checked = self._check(method, path, headers, body)
            if isinstance(checked, _Reply):
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
            self._requests.append(RecordedRequest(method, path, headers, body, reply.status))
        return reply

    def _check(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Reply | _Call:
        """Route, authenticate, inject faults, rate-limit and parse."""
        if path not in (EMAILS, BATCH):
            return _error(404, "not_found", "The requested endpoint does not exist.")
        if method != "POST":
            return _error(405, "method_not_allowed", "Method is not allowed for the requested path.")
        auth = headers.get("authorization")
        if not auth:
            return _error(401, "missing_api_key", "Missing API key; send `Authorization: Bearer <key>`.")
        if auth != f"Bearer {self.api_key}":
            return _error(403, "invalid_api_key", "API key is invalid.")
        if not headers.get("user-agent"):
            return _error(403, "missing_user_agent", "A User-Agent header is required.")
        late = 0.0
        with self._lock:
            if self._failures:
                return self._failures.popleft()
            if self._error_rates is not None:
                p500, p429, p_timeout, delay = self._error_rates
                roll = self._rng.random()
                if roll < p500:
                    return _error(500, "internal_server_error", "injected random failure")
                if roll < p500 + p429:
                    headers_429 = _retry_headers(429, None, self._limit())
                    return _error(429, "rate_limit_exceeded", "injected random rate limit", headers_429)
                late = delay if roll < p500 + p429 + p_timeout else 0.0
            if self.rate_limit is not None:
                now = time.monotonic()
                while self._window and self._window[0] <= now - 1.0:
                    self._window.popleft()
                if len(self._window) >= self._limit():
                    message = f"Too many requests: the limit is {self._limit()} per second."
                    return _error(429, "rate_limit_exceeded", message, _retry_headers(429, 1, self._limit()))
                self._window.append(now)
        key = headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
            message = f"The Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters."
            return _error(400, "invalid_idempotency_key", message)
        try:
            data = json.loads(body)
        except ValueError:
            return _error(422, "validation_error", "The request body must be valid JSON.")
        return _Call(path, headers, data, key, late)

    def _claim(self, call: _Call) -> _Reply | None:
        """Take the call's idempotency key: None if taken, else the reply that refuses or replays."""
        if call.key is None:
            return None
        with self._lock:
            if call.key in self._in_flight:
                message = "Another request with this Idempotency-Key is in progress; retry it later."
                return _error(409, "concurrent_idempotent_requests", message)
            if call.key in self._cache:
                fingerprint, original = self._cache[call.key]
                if fingerprint != call.fingerprint:
                    message = "This Idempotency-Key was already used with a different request body."
                    return _error(409, "invalid_idempotent_request", message)
                self._replays += 1
                return original
            self._in_flight.add(call.key)
            return None

    def _process(self, call: _Call) -> _Reply:
        """Hold (if a gate is armed), validate and accept a call that holds its key."""
        with self._lock:
            gate = self._gates.popleft() if self._gates else None
            rejected = frozenset(self.reject_recipients)
        if gate is not None:
            gate.arrived.set()
            gate._released.wait()
        plan = self._plan_single if call.path == EMAILS else self._plan_batch
        planned = plan(call, rejected)
        if isinstance(planned, _Reply):
            return planned
        emails, obj = planned
        reply = _json(200, obj)
        with self._lock:
            late = self._late.popleft() if self._late else call.late
            self._accepted.extend(emails)
            if call.key is not None:
                self._cache[call.key] = (call.fingerprint, reply)
                self._accepts_by_key[call.key] += 1
        return replace(reply, delay=late)

    def _plan_single(self, call: _Call, rejected: frozenset[str]) -> _Reply | tuple[list[AcceptedEmail], Any]:
        problem = _problem(call.data, rejected)
        if problem is not None:
            return _error(422, *problem)
        email = AcceptedEmail(str(uuid.uuid4()), call.key, call.data, call.headers, batch=False)
        return [email], {"id": email.id}

    def _plan_batch(self, call: _Call, rejected: frozenset[str]) -> _Reply | tuple[list[AcceptedEmail], Any]:
        items = call.data
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            return _error(422, "validation_error", f"A batch must be a JSON array of 1-{MAX_BATCH} emails.")
        mode = call.headers.get("x-batch-validation", "strict")
        if mode not in ("strict", "permissive"):
            return _error(422, "validation_error", "x-batch-validation must be `strict` or `permissive`.")
        for index, item in enumerate(items):
            for name in ("attachments", "scheduled_at"):
                if isinstance(item, dict) and name in item:
                    message = f"emails[{index}]: `{name}` is not allowed in a batch."
                    return _error(422, "validation_error", message)
        emails: list[AcceptedEmail] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            problem = _problem(item, rejected)
            if problem is None:
                emails.append(AcceptedEmail(str(uuid.uuid4()), call.key, item, call.headers, True, index))
            elif mode == "strict":
                return _error(422, problem[0], f"emails[{index}]: {problem[1]}")
            else:
                errors.append({"index": index, "message": problem[1]})
        obj: dict[str, Any] = {"data": [{"id": email.id} for email in emails]}
        if mode == "permissive":
            obj["errors"] = errors
        return emails, obj


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeResend/1.0"
    timeout = 10  # a client that connects and sends nothing cannot keep a thread forever

    def _handle(self) -> None:
        fake = cast(_Server, self.server).fake
        try:
            length = max(0, int(self.headers.get("content-length") or 0))
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = fake._serve(self.command, urlsplit(self.path).path, headers, body)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read the record, not an access log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 resets bursts of parallel clients

    def __init__(self, address: tuple[str, int], fake: FakeResend) -> None:
        super().__init__(address, _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that times out or hangs up mid-reply is part of the job, not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Resend API until Ctrl-C.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--api-key", default="re_test_fake")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=None)
    args = parser.parse_args(argv)
    fake = FakeResend(
        api_key=args.api_key, host=args.host, port=args.port, latency=args.latency, rate_limit=args.rate_limit
    )
    with fake:
        print(f"Fake Resend at {fake.url} (API key {fake.api_key}); Ctrl-C stops it.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
