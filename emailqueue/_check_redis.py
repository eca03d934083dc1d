"""The Redis half of ``emailqueue check``: URL, DNS, TCP, TLS, AUTH, latency, server, permissions
and a round trip that leaves no keys. Each step returns (status, detail, fix)."""

import hashlib
import ipaddress
import secrets
import socket
import ssl
import statistics
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.serializers import JSONSerializer

from ._redact import redact_url

Status = Literal["ok", "warn", "fail", "skip"]
#: host, port -> the addresses it resolves to; raises socket.gaierror.
Resolver = Callable[[str, int], list[str]]
#: A step's status, what it found, and the fix ("" when there is nothing to fix).
Outcome = tuple[Status, str, str]

PROBE_FUNC_PATH = "emailqueue._check_redis.probe"
_PROBE_PREFIX = "emailqueue-check-"
_PING_COUNT = 5
_SLOW_PING_MS = 100.0
_SCAN_CALLS = 50  # at most 50 x 1000 keys: Upstash bills each SCAN call
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


class _Fail(Exception):
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


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_private or ip.is_loopback


class _RedisChecks:
    """The Redis steps, in order; each returns (status, detail, fix) or raises _Fail."""

    def __init__(self, url: str | None, source: str, ca_cert: str | None, timeout: float, resolve: Resolver):
        self.url, self.source, self.ca_cert = url, source, ca_cert
        self.timeout, self.resolve = timeout, resolve
        self.opts: dict[str, Any] = {}
        self.host, self.port, self.private = "localhost", 6379, True
        self.addresses: list[str] = []
        self.steps_not_needed: set[str] = set()
        self.client: redis.Redis | None = None

    def steps(self) -> list[tuple[str, Callable[[], Outcome]]]:
        return [
            ("url", self.check_url), ("dns", self.dns), ("tcp", self.tcp), ("tls", self.tls),
            ("auth", self.auth), ("ping", self.ping), ("server", self.server), ("eval", self.eval),
            ("client", self.client_cmds), ("round_trip", self.round_trip),
        ]  # fmt: skip

    @property
    def conn(self) -> redis.Redis:
        assert self.client is not None
        return self.client

    def check_url(self) -> Outcome:
        if not self.url:
            fix = "set QUEUE_REDIS_URL=redis://localhost:6379 (rediss:// for Upstash) or run `emailqueue dev`"
            raise _Fail(f"no Redis URL: {self.source}", fix)
        try:
            self.opts = parse_url(self.url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            fix = "use redis://[user:password@]host:port/db, or rediss:// for TLS"
            raise _Fail(
                f"{self.source} = {redact_url(self.url)} is not a valid Redis URL: {exc}", fix
            ) from None
        if "path" in self.opts:
            self.steps_not_needed = {"dns", "tcp", "tls"}
            return "ok", f"{self.source} = {redact_url(self.url)} (a unix socket)", ""
        self.host, self.port = self.opts.get("host") or "localhost", int(self.opts.get("port") or 6379)
        hint = upstash_tls_hint(self.url)
        if hint:
            raise _Fail(f"{self.source} = {redact_url(self.url)}: a plain redis:// URL to Upstash", hint)
        return "ok", f"{self.source} = {redact_url(self.url)}", ""

    def dns(self) -> Outcome:
        try:
            addresses = self.resolve(self.host, self.port)
        except (socket.gaierror, UnicodeError) as exc:
            why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            fix = f"check the host name in {self.source}"
            raise _Fail(f"cannot resolve host {self.host!r} ({why})", fix) from None
        self.addresses, self.private = addresses, all(_is_private(a) for a in addresses)
        return "ok", f"{self.host} resolves to {', '.join(addresses[:3])}", ""

    def tcp(self) -> Outcome:
        where, start = f"{self.host}:{self.port}", time.perf_counter()
        try:
            # The addresses the dns step found, in order, as socket.create_connection would try them.
            with self._connect(self.addresses) as sock:
                self.addresses = [sock.getpeername()[0]]
        except ConnectionRefusedError:
            fix = f"start Redis (`emailqueue dev` runs one locally) or correct the port in {self.source}"
            raise _Fail(f"connection refused: is Redis running on {where}?", fix) from None
        except TimeoutError:
            fix = f"a firewall may drop the traffic, or the port in {self.source} is wrong"
            raise _Fail(f"no answer from {where} within {self.timeout:g} s", fix) from None
        except OSError as exc:
            raise _Fail(f"cannot connect to {where}: {exc.strerror or exc}", "check the network") from None
        return "ok", f"connected to {where} in {(time.perf_counter() - start) * 1000:.0f} ms", ""

    def _connect(self, addresses: list[str]) -> socket.socket:
        error: OSError = OSError("no address")
        for address in addresses:
            try:
                return socket.create_connection((address, self.port), timeout=self.timeout)
            except OSError as exc:
                error = exc
        raise error

    def tls(self) -> Outcome:
        if self.opts.get("connection_class") is not SSLConnection:
            if self.private:
                return "ok", "not used (redis://): fine for localhost or a private network", ""
            fix = "use rediss:// if the server supports TLS"
            return "warn", "not used (redis://): the password and emails cross the network unencrypted", fix
        # The CA as redis-py (and so rq worker) would use it: the setting, else ?ssl_ca_certs=.
        ca_cert = self.ca_cert or self.opts.get("ssl_ca_certs")
        try:
            context = ssl.create_default_context()
            if ca_cert:
                context.load_verify_locations(ca_cert)
            verify = str(self.opts.get("ssl_cert_reqs", "required")).lower() not in ("none", "cert_none")
            if not verify:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            with (
                self._connect(self.addresses) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                version = tls.version()
        except FileNotFoundError:
            raise _Fail(f"CA file {ca_cert} not found", "fix QUEUE_REDIS_CA_CERT or --ca-cert") from None
        except ssl.SSLCertVerificationError as exc:
            fix = (
                "for a private CA or a self-signed certificate, pass it with --ca-cert or QUEUE_REDIS_CA_CERT"
            )
            raise _Fail(f"the server's TLS certificate is not trusted: {exc.verify_message}", fix) from None
        except TimeoutError:
            raise _Fail(f"no TLS handshake within {self.timeout:g} s: no TLS there?", _TLS_FIX) from None
        except (ssl.SSLError, OSError) as exc:
            raise _Fail(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}", _TLS_FIX) from None
        if not verify:
            return (
                "warn",
                f"{version}, certificate NOT verified (ssl_cert_reqs=none)",
                "pass --ca-cert instead",
            )
        return "ok", f"{version}, certificate verified", ""

    def auth(self) -> Outcome:
        # Like _connection.connect, but without retries (report failures at once) and with a CA file.
        tls = self.opts.get("connection_class") is SSLConnection
        extra = {"ssl_ca_certs": self.ca_cert} if tls and self.ca_cert else {}
        self.client = redis.Redis.from_url(
            self.url or "", socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), **extra,
        )  # fmt: skip
        user = self.opts.get("username") or "default"
        try:
            self.conn.ping()
        except redis.AuthenticationError as exc:
            if self.opts.get("password") is None:
                fix = f"put the password in {self.source}: redis://:<password>@{self.host}:{self.port}"
                raise _Fail(
                    f"the server requires a password and the URL has none (NOAUTH: {exc})", fix
                ) from None
            raise _Fail(
                f"Redis refused the password for user {user!r} ({exc})",
                f"check the password in {self.source}",
            ) from None
        except redis.RedisError as exc:
            fix = f"is {self.host}:{self.port} really a Redis server? check the port in {self.source}"
            raise _Fail(f"no Redis answer: {exc}", fix) from None
        return "ok", f"logged in as {user!r}" if self.opts.get("password") else "no password needed", ""

    def ping(self) -> Outcome:
        times = []
        for _ in range(_PING_COUNT):
            start = time.perf_counter()
            self.conn.ping()
            times.append((time.perf_counter() - start) * 1000)
        median = statistics.median(times)
        detail = f"median {median:.1f} ms over {_PING_COUNT} PINGs"
        if median > _SLOW_PING_MS:
            fix = "a worker makes about 27 round trips per email: run it in the same region as Redis"
            return "warn", detail + " (slow)", fix
        return "ok", detail, ""

    def server(self) -> Outcome:
        try:
            info = self.conn.info("server")
        except redis.ResponseError as exc:
            fix = "allow INFO for this Redis user: RQ workers read the server version with INFO server"
            raise _Fail(f"INFO is not allowed: {exc}", fix, blocking=False) from None
        name = "valkey" if "valkey_version" in info else str(info.get("server_name") or "redis")
        version = info.get("valkey_version") or info.get("redis_version") or "unknown"
        return "ok", f"{name} {version} (redis_version {info.get('redis_version', '?')})", ""

    def eval(self) -> Outcome:
        script = "return 1"
        for command in ("EVAL", "EVALSHA"):
            try:
                if command == "EVAL":
                    self.conn.eval(script, 0)
                else:
                    self.conn.evalsha(hashlib.sha1(script.encode()).hexdigest(), 0)
            except redis.ResponseError as exc:
                fix = "allow Lua scripts for this Redis user (ACL +eval +evalsha, or +@scripting)"
                detail = f"{command} is refused ({exc}): emailqueue and RQ both run Lua scripts"
                raise _Fail(detail, fix, blocking=False) from None
        return "ok", "EVAL and EVALSHA work (Lua scripting)", ""

    def client_cmds(self) -> Outcome:
        # RQ workers name their connection and read their address back (CLIENT INFO, else LIST).
        try:
            self.conn.client_setname(_PROBE_PREFIX + "connection")
            try:
                self.conn.client_info()
            except redis.ResponseError:
                self.conn.client_list()
        except redis.ResponseError as exc:
            detail = (
                f"CLIENT is refused ({exc}): RQ workers still run, but warn and show their address as unknown"
            )
            return "warn", detail, "optional: allow +client|setname +client|info +client|list for this user"
        return "ok", "CLIENT SETNAME and CLIENT INFO work (used by RQ workers)", ""

    def round_trip(self) -> Outcome:
        token = secrets.token_hex(8)
        queue = Queue(_PROBE_PREFIX + token, connection=self.conn, serializer=JSONSerializer)
        start, failure = time.perf_counter(), None
        try:
            queue.enqueue_call(
                func=PROBE_FUNC_PATH, kwargs={"token": token}, job_id=queue.name, result_ttl=0, ttl=60
            )
            popped = Queue.dequeue_any([queue], None, connection=self.conn, serializer=JSONSerializer)
            if popped is None or popped[0].id != queue.name:
                failure = _Fail("the probe job vanished between enqueue and dequeue", "is a worker on it?")
            elif popped[0].func(**popped[0].kwargs) != "ok":
                failure = _Fail("the probe job did not run", "reinstall emailqueue")
        except redis.RedisError as exc:
            failure = _Fail(f"Redis refused part of the RQ round trip: {exc}", "give this user +@all on ~*")
        ms = (time.perf_counter() - start) * 1000
        unexpected, left, complete = self._clean_up(queue, token)
        if left:
            fix = "delete them by hand (they belong to the check only) and allow DEL for this user"
            raise _Fail(f"could not delete the probe's keys: {', '.join(left)}", fix)
        if failure is not None:
            raise failure
        if unexpected:
            detail = f"RQ made keys the check did not expect: {', '.join(unexpected)} (now deleted)"
            return "warn", detail, "report this as an emailqueue bug"
        scanned = "" if complete else "; the keyspace is too large to scan it all"
        return "ok", f"enqueued and dequeued a probe job in {ms:.0f} ms, no keys left behind{scanned}", ""

    def _clean_up(self, queue: Queue, token: str) -> tuple[list[str], list[str], bool]:
        """Delete what the probe made; return the keys it made unexpectedly, the keys still left
        and whether the scan covered the whole keyspace."""
        # By hand: Queue.delete(delete_jobs=True) empties the queue with a Lua script, which a
        # user without EVAL cannot run, and the check must clean up after itself regardless.
        intermediate = IntermediateQueue(queue.key, self.conn)
        job_id, planned = queue.name, [queue.key, intermediate.key]
        planned += [Job.key_for(job_id), intermediate.get_first_seen_key(job_id)]
        unexpected: list[str] = []
        for attempt in range(2):
            with suppress(redis.RedisError), self.conn.pipeline(transaction=False) as pipe:
                pipe.delete(*planned, *(k for k in unexpected if " " not in k))
                pipe.srem(queue.redis_queues_keys, queue.key)
                pipe.execute()
            found, complete = self._keys_matching(token)
            if self.conn.sismember(queue.redis_queues_keys, queue.key):
                found.add(f"{queue.key} in {queue.redis_queues_keys}")
            unexpected = unexpected if attempt else sorted(found)
        return unexpected, sorted(found), complete

    def _keys_matching(self, token: str) -> tuple[set[str], bool]:
        found: set[str] = set()
        cursor = 0
        for _ in range(_SCAN_CALLS):
            cursor, keys = self.conn.scan(cursor, match=f"*{token}*", count=1000)
            found.update(k.decode() if isinstance(k, bytes) else str(k) for k in keys)
            if cursor == 0:
                return found, True
        return found, False
