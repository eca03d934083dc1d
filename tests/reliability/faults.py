"""Real faults for the reliability suite: worker processes to SIGKILL, a TCP proxy that loses a
Redis request or reply at a chosen moment, and "later" for Redis.

Time is a parameter: a later drain passes ``wall_clock=later_clock``, and :func:`age_redis` deletes
the keys whose TTL would have run out by then (a dead VM worker's 61 s scheduler lock, its
worker keys, a rate-limit pause), since Redis's own clock cannot be moved.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO

import redis

REPO = Path(__file__).resolve().parents[2]
RQ = str(Path(sys.executable).with_name("rq"))

#: Seconds: "a later run", past every retry delay, lease and abandonment window in these tests.
LATER = 10_000.0

_OWN_PREFIXES = ("QUEUE_", "RESEND_", "EMAIL_", "DRAIN_", "REDIS_URL", "KV_", "EMAILQUEUE_", "RQ_")


def later_clock() -> float:
    return time.time() + LATER


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.005) -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def age_redis(conn: redis.Redis, seconds: float = LATER) -> int:
    """Delete every key whose TTL runs out within ``seconds``: Redis as it would be that much later.

    Keys without a TTL (jobs, queues, registries) and longer-lived ones (dedup markers, 7 days)
    stay. Returns how many keys were deleted.
    """
    keys = list(conn.scan_iter(count=1000))
    if not keys:
        return 0
    with conn.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
        ttls = pipe.execute()
    expiring = [k for k, ttl in zip(keys, ttls, strict=True) if 0 <= ttl <= seconds * 1000]
    if expiring:
        conn.delete(*expiring)
    return len(expiring)


# --- worker processes ---------------------------------------------------------------------------


def worker_env(redis_url: str, api_key: str, api_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker process: this machine's, minus any emailqueue setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env.update(
        QUEUE_REDIS_URL=redis_url,
        RESEND_API_KEY=api_key,
        RESEND_API_URL=api_url,
        RESEND_RATE_LIMIT="0",
        EMAIL_PACK="false",  # the single path unless a scenario's packing variant asks for it
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def start_drain(env: dict[str, str], log: IO[bytes], cwd: Path) -> subprocess.Popen[bytes]:
    """A serverless drain run (``emailqueue.drain()`` reading its settings from the environment)."""
    code = "import emailqueue; print(emailqueue.drain().to_dict(), flush=True)"
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
    )


def start_rq_worker(
    redis_url: str,
    env: dict[str, str],
    log: IO[bytes],
    cwd: Path,
    *,
    burst: bool = False,
    extra: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """The README's VM worker: ``rq worker --with-scheduler --serializer json --url URL emails``
    (``extra``: more options, before the queue name)."""
    args = [
        RQ,
        "worker",
        "--with-scheduler",
        "--serializer",
        "json",
        "--url",
        redis_url,
        *(extra or []),
        "emails",
    ]
    return subprocess.Popen(
        [*args, "--burst"] if burst else args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
    )


def start_emailqueue_worker(
    env: dict[str, str], log: IO[bytes], cwd: Path, *, burst: bool = False
) -> subprocess.Popen[bytes]:
    """``emailqueue worker``: RQ's worker with emailqueue's job and worker classes (it packs)."""
    args = [sys.executable, "-m", "emailqueue", "worker", *(["--burst"] if burst else [])]
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def lapse_pack_leases(conn: redis.Redis, queue: str = "emails") -> int:
    """Every pack's claim lease as if it had run out (``EMAIL_JOB_TIMEOUT_S`` + 30 s later): a
    worker process cannot be given a later clock, so Redis is moved instead, as :func:`age_redis`
    does for TTLs. Returns how many packs are now due."""
    key = f"emailqueue:packs:{queue}"
    members = conn.zrange(key, 0, -1)
    if members:
        conn.zadd(key, {m: 0 for m in members}, xx=True)
    return len(members)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (an RQ worker's work horse and scheduler process)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += tree.get(current, [])
    return out


def sigkill_tree(proc: subprocess.Popen[bytes]) -> list[int]:
    """The machine dies: freeze the process and its descendants, then SIGKILL them all.

    RQ's work horse runs in its own process group, so killing the group would miss it; the tree
    is found through /proc instead. Freezing first means nobody forks or finishes in between.
    """
    # SIGSTOP is delivered asynchronously: a process may still fork (RQ's worker starts its
    # scheduler process at any loop) after kill() returns. So each process is waited for until
    # it is really stopped, and the tree is read again until no new process shows up; a
    # scheduler missed here would outlive the test and write its lock into later tests' Redis.
    pids: list[int] = []
    while True:
        fresh = [pid for pid in process_tree(proc.pid) if pid not in pids]
        if not fresh:
            break
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in fresh:
            wait_for(partial(_stopped, pid), 10, f"pid {pid} to stop")
        pids += fresh
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for pid in pids[1:]:  # grandchildren are reaped by init; wait until they are gone or zombies
        wait_for(partial(_dead, pid), 10, f"pid {pid} to die")
    return pids


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _stopped(pid: int) -> bool:
    return _state(pid) in ("T", "t", "Z", "X")


def _dead(pid: int) -> bool:
    return _state(pid) in ("Z", "X")


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """A clean stop: SIGTERM (RQ's warm shutdown), then wait."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


# --- a TCP proxy in front of Redis --------------------------------------------------------------


class Trap:
    """Catches the first client request containing ``marker`` at the proxy.

    ``request_seen`` is set while that request is held (the server has not seen it); then either
    :meth:`drop_request`, or :meth:`forward` and wait for ``reply_seen`` (the server ran it; its
    reply is held), then :meth:`drop_reply` or :meth:`deliver_reply`.
    """

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.request_seen = threading.Event()
        self.reply_seen = threading.Event()
        self._request_action: str | None = None
        self._reply_action: str | None = None
        self._request_go = threading.Event()
        self._reply_go = threading.Event()

    def drop_request(self) -> None:
        self._request_action = "drop"
        self._request_go.set()

    def forward(self) -> None:
        self._request_action = "forward"
        self._request_go.set()

    def drop_reply(self) -> None:
        self._reply_action = "drop"
        self._reply_go.set()

    def deliver_reply(self) -> None:
        self._reply_action = "deliver"
        self._reply_go.set()

    def release(self) -> None:
        """Let anything still held through (test teardown)."""
        self.forward()
        self.deliver_reply()


class RedisProxy:
    """Forwards TCP between clients and a Redis server on 127.0.0.1, with one :class:`Trap` at a
    time; :meth:`hold_new_connections` makes new client connections wait before they reach the
    server (a client retrying while the server restarts)."""

    def __init__(self, upstream_port: int, db: int = 0) -> None:
        self.upstream_port = upstream_port
        self.db = db  # the URL's database: a shared server's test db (15), not db 0
        self.trap: Trap | None = None
        self._open_upstream = threading.Event()
        self._open_upstream.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self.waiting = 0  # client connections held by hold_new_connections()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="redis-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def arm(self, marker: bytes) -> Trap:
        self.trap = Trap(marker)
        return self.trap

    def hold_new_connections(self) -> None:
        self._open_upstream.clear()

    def open_new_connections(self) -> None:
        self._open_upstream.set()

    def close(self) -> None:
        self._closed = True
        self._open_upstream.set()
        if self.trap is not None:
            self.trap.release()
        with self._lock:
            socks, self._sockets = self._sockets, []
        for sock in [self._listener, *socks]:
            with contextlib.suppress(OSError):
                sock.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(self._track(client),), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if not self._open_upstream.is_set():
            with self._lock:
                self.waiting += 1
            self._open_upstream.wait(30)
            with self._lock:
                self.waiting -= 1
        try:
            upstream = self._track(socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5))
            upstream.settimeout(None)
        except OSError:
            _close(client)  # the server is down: the client sees its connection closed
            return
        caught: list[Trap] = []  # the trap that caught a request on this connection
        threading.Thread(target=self._pump_up, args=(client, upstream, caught), daemon=True).start()
        self._pump_down(upstream, client, caught)

    def _pump_up(self, client: socket.socket, upstream: socket.socket, caught: list[Trap]) -> None:
        """Client -> server, where the trap catches its request."""
        try:
            while data := client.recv(65536):
                trap = self.trap
                if trap is not None and not trap.request_seen.is_set() and trap.marker in data:
                    trap.request_seen.set()
                    trap._request_go.wait(30)
                    if trap._request_action == "drop":
                        break
                    caught.append(trap)
                upstream.sendall(data)
        except OSError:
            pass
        _close(client, upstream)

    def _pump_down(self, upstream: socket.socket, client: socket.socket, caught: list[Trap]) -> None:
        """Server -> client, where the trap holds the reply of the request it caught."""
        try:
            while data := upstream.recv(65536):
                trap = caught[0] if caught else None
                if trap is not None and not trap.reply_seen.is_set():
                    trap.reply_seen.set()
                    trap._reply_go.wait(30)
                    if trap._reply_action == "drop":
                        break
                client.sendall(data)
        except OSError:
            pass
        _close(client, upstream)


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


@contextlib.contextmanager
def redis_proxy(upstream_port: int, db: int = 0) -> Iterator[RedisProxy]:
    proxy = RedisProxy(upstream_port, db)
    try:
        yield proxy
    finally:
        proxy.close()
