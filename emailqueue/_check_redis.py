"""The connection half of ``emailqueue check``: URL, DNS, TCP, TLS and AUTH, and the steps' shape
(the server's latency, version, permissions and an RQ round trip are in ``_check_server``).

Each step is a function of a :class:`Probe` (what earlier steps found) that returns its outcome
(status, detail, fix) and the probe for the next step, or raises :class:`StepFailed`. Nothing is
kept in mutable attributes: :func:`run_steps` threads the probe through. The first five steps
are also the diagnosis every command gives when Redis fails (:func:`diagnose`).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry

from ._redact import redact_url

Status = Literal["ok", "warn", "fail", "skip"]
#: host, port -> the addresses it resolves to; raises socket.gaierror.
Resolver = Callable[[str, int], list[str]]
#: A step's status, what it found, and the fix ("" when there is nothing to fix).
Outcome = tuple[Status, str, str]

PROBE_FUNC_PATH = "emailqueue._check_redis.probe"
PROBE_PREFIX = "emailqueue-check-"
#: The auth step's failure when something answers TCP but not as Redis: a wrong port, or a
#: server that went away mid-check, so not a conclusive diagnosis for a command that failed.
NO_ANSWER = "no Redis answer"
_TLS_FIX = (
    "use redis:// for a server without TLS (a local Redis) and rediss:// for TLS servers such as Upstash"
)


@dataclass(frozen=True)
class StepResult:
    """The outcome of one step: ``status`` is ok, warn, fail or skip; ``fix`` says what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""


class StepFailed(Exception):
    """A step failed: what was found and the fix. ``blocking``: later steps cannot run."""

    def __init__(self, detail: str, fix: str, *, blocking: bool = True) -> None:
        super().__init__(detail)
        self.detail, self.fix, self.blocking = detail, fix, blocking


def probe(token: str = "") -> str:
    """The job the round trip enqueues: a worker that can import emailqueue can run it."""
    return "ok"


def upstash_tls_hint(url: str) -> str | None:
    """The fix for a plain ``redis://`` URL to Upstash, which only accepts TLS; else None."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "redis" and (host == "upstash.io" or host.endswith(".upstash.io")):
        return f"Upstash only accepts TLS: use {redact_url('rediss://' + url[len('redis://') :])}"
    return None


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (``socket.getaddrinfo``); raises socket.gaierror."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_private or ip.is_loopback


@dataclass(frozen=True)
class Probe:
    """What the steps know so far. Each step returns a new one; none is changed in place."""

    url: str | None
    source: str
    ca_cert: str | None = None
    timeout: float = 3.0
    resolve: Resolver = resolve_host
    opts: Mapping[str, Any] = field(default_factory=dict)
    host: str = "localhost"
    port: int = 6379
    private: bool = True
    unix_socket: bool = False
    addresses: tuple[str, ...] = ()
    client: redis.Redis | None = None

    @property
    def conn(self) -> redis.Redis:
        assert self.client is not None, "the auth step makes the client"
        return self.client


#: A step: the probe so far -> its outcome and the probe for the next step; or StepFailed.
Step = Callable[[Probe], tuple[Outcome, Probe]]


def check_url(p: Probe) -> tuple[Outcome, Probe]:
    if not p.url:
        fix = "set QUEUE_REDIS_URL=redis://localhost:6379 (rediss:// for Upstash) or run `emailqueue dev`"
        raise StepFailed(f"no Redis URL: {p.source}", fix)
    try:
        opts = parse_url(p.url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        fix = "use redis://[user:password@]host:port/db, or rediss:// for TLS"
        raise StepFailed(f"{p.source} = {redact_url(p.url)} is not a valid Redis URL: {exc}", fix) from None
    if "path" in opts:
        return ("ok", f"{p.source} = {redact_url(p.url)} (a unix socket)", ""), replace(
            p, opts=opts, unix_socket=True
        )
    host, port = opts.get("host") or "localhost", int(opts.get("port") or 6379)
    hint = upstash_tls_hint(p.url)
    if hint:
        raise StepFailed(f"{p.source} = {redact_url(p.url)}: a plain redis:// URL to Upstash", hint)
    return ("ok", f"{p.source} = {redact_url(p.url)}", ""), replace(p, opts=opts, host=host, port=port)


def dns(p: Probe) -> tuple[Outcome, Probe]:
    try:
        addresses = p.resolve(p.host, p.port)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise StepFailed(
            f"cannot resolve host {p.host!r} ({why})", f"check the host name in {p.source}"
        ) from None
    private = all(_is_private(a) for a in addresses)
    detail = f"{p.host} resolves to {', '.join(addresses[:3])}"
    return ("ok", detail, ""), replace(p, addresses=tuple(addresses), private=private)


def _connect(p: Probe, addresses: tuple[str, ...]) -> socket.socket:
    error: OSError = OSError("no address")
    for address in addresses:
        try:
            return socket.create_connection((address, p.port), timeout=p.timeout)
        except OSError as exc:
            error = exc
    raise error


def tcp(p: Probe) -> tuple[Outcome, Probe]:
    where, start = f"{p.host}:{p.port}", time.perf_counter()
    try:
        # The addresses the dns step found, in order, as socket.create_connection would try them.
        with _connect(p, p.addresses) as sock:
            peer = str(sock.getpeername()[0])
    except ConnectionRefusedError:
        fix = f"start Redis (`emailqueue dev` runs one locally) or correct the port in {p.source}"
        raise StepFailed(f"connection refused: is Redis running on {where}?", fix) from None
    except TimeoutError:
        fix = f"a firewall may drop the traffic, or the port in {p.source} is wrong"
        raise StepFailed(f"no answer from {where} within {p.timeout:g} s", fix) from None
    except OSError as exc:
        raise StepFailed(f"cannot connect to {where}: {exc.strerror or exc}", "check the network") from None
    detail = f"connected to {where} in {(time.perf_counter() - start) * 1000:.0f} ms"
    return ("ok", detail, ""), replace(p, addresses=(peer,))


def tls(p: Probe) -> tuple[Outcome, Probe]:
    if p.opts.get("connection_class") is not SSLConnection:
        if p.private:
            return ("ok", "not used (redis://): fine for localhost or a private network", ""), p
        fix = "use rediss:// if the server supports TLS"
        return ("warn", "not used (redis://): the password and emails cross the network unencrypted", fix), p
    # The CA as redis-py (and so rq worker) would use it: the setting, else ?ssl_ca_certs=.
    ca_cert = p.ca_cert or p.opts.get("ssl_ca_certs")
    try:
        context = ssl.create_default_context()
        if ca_cert:
            context.load_verify_locations(ca_cert)
        verify = str(p.opts.get("ssl_cert_reqs", "required")).lower() not in ("none", "cert_none")
        if not verify:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with _connect(p, p.addresses) as raw, context.wrap_socket(raw, server_hostname=p.host) as sock:
            version = sock.version()
    except FileNotFoundError:
        raise StepFailed(f"CA file {ca_cert} not found", "fix QUEUE_REDIS_CA_CERT or --ca-cert") from None
    except ssl.SSLCertVerificationError as exc:
        fix = "for a private CA or a self-signed certificate, pass it with --ca-cert or QUEUE_REDIS_CA_CERT"
        raise StepFailed(f"the server's TLS certificate is not trusted: {exc.verify_message}", fix) from None
    except TimeoutError:
        raise StepFailed(f"no TLS handshake within {p.timeout:g} s: no TLS there?", _TLS_FIX) from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise StepFailed(f"TLS handshake failed: {reason} (is it a server without TLS?)", _TLS_FIX) from None
    if not verify:
        detail = f"{version}, certificate NOT verified (ssl_cert_reqs=none)"
        return ("warn", detail, "pass --ca-cert instead"), p
    return ("ok", f"{version}, certificate verified", ""), p


def auth(p: Probe) -> tuple[Outcome, Probe]:
    # Like _connection.connect, but without retries (report failures at once) and with a CA file.
    is_tls = p.opts.get("connection_class") is SSLConnection
    extra = {"ssl_ca_certs": p.ca_cert} if is_tls and p.ca_cert else {}
    client = redis.Redis.from_url(
        p.url or "", socket_timeout=p.timeout, socket_connect_timeout=p.timeout,
        retry=Retry(NoBackoff(), 0), protocol=2, driver_info=None, **extra,
    )  # fmt: skip
    user = p.opts.get("username") or "default"
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()  # a failed step returns no probe to carry the client
        raise _auth_failure(p, user, exc) from None
    detail = f"logged in as {user!r}" if p.opts.get("password") else "no password needed"
    return ("ok", detail, ""), replace(p, client=client)


def _auth_failure(p: Probe, user: str, exc: redis.RedisError) -> StepFailed:
    if isinstance(exc, redis.AuthenticationError):
        if p.opts.get("password") is None:
            fix = f"put the password in {p.source}: redis://:<password>@{p.host}:{p.port}"
            return StepFailed(f"the server requires a password and the URL has none (NOAUTH: {exc})", fix)
        return StepFailed(
            f"Redis refused the password for user {user!r} ({exc})", f"check the password in {p.source}"
        )
    fix = f"is {p.host}:{p.port} really a Redis server? check the port in {p.source}"
    return StepFailed(f"{NO_ANSWER}: {exc}", fix)


CONNECTION_STEPS: tuple[tuple[str, Step], ...] = (
    ("url", check_url), ("dns", dns), ("tcp", tcp), ("tls", tls), ("auth", auth),
)  # fmt: skip
_UNIX_SOCKET_SKIPS = frozenset({"dns", "tcp", "tls"})


def run_steps(probe: Probe, steps: tuple[tuple[str, Step], ...]) -> list[StepResult]:
    """Run ``steps`` in order, threading the probe; a step after a blocking failure is ``skip``.

    The Redis client the auth step opens is closed before this returns.
    """
    results: list[StepResult] = []
    blocked: str | None = None
    try:
        for name, step in steps:
            if blocked:
                results.append(StepResult(name, "skip", f"skipped: the {blocked} step failed"))
                continue
            if probe.unix_socket and name in _UNIX_SOCKET_SKIPS:
                results.append(StepResult(name, "ok", "not needed for a unix socket"))
                continue
            try:
                (status, detail, fix), probe = step(probe)
            except StepFailed as exc:
                status, detail, fix = "fail", exc.detail, exc.fix
                blocked = name if exc.blocking else None
            except redis.RedisError as exc:
                status, detail, fix, blocked = "fail", f"unexpected Redis error: {exc}", "", name
            results.append(StepResult(name, status, detail, fix))
    finally:
        if probe.client is not None:
            probe.client.close()
    return results


def diagnose(
    url: str, *, source: str = "QUEUE_REDIS_URL", ca_cert: str | None = None, timeout: float = 2.0
) -> StepResult | None:
    """Why Redis at ``url`` cannot be used: the first failing connection step (refused, no such
    host, TLS against a plain server, a missing or wrong password), or None if it connects or
    the failure is not conclusive (something answers, but not as Redis)."""
    results = run_steps(Probe(url, source, ca_cert=ca_cert, timeout=timeout), CONNECTION_STEPS)
    failed = next((r for r in results if r.status == "fail"), None)
    return None if failed is None or failed.detail.startswith(NO_ANSWER) else failed
