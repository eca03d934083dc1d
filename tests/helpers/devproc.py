"""Run `emailqueue dev` as a user would (its console script, in a directory of its own) and manage
its whole process tree: the tree is read from /proc while it runs, never matched by name across
the machine, and every process of it is checked gone (or killed) at the end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

EXE = str(Path(sys.executable).with_name("emailqueue"))
SCRUB = (
    "QUEUE_REDIS_URL",
    "REDIS_URL",
    "KV_URL",
    "RESEND_API_KEY",
    "RESEND_API_URL",
    "EMAIL_FROM",
    "EMAIL_QUEUE_NAME",
    "CRON_SECRET",
    "QUEUE_ADMIN_TOKEN",
    "EMAILQUEUE_DEV",
    "EMAILQUEUE_OUTBOX_DIR",
    "VERCEL_ENV",
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no emailqueue setting, the venv's scripts on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: it only waits for its parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants(root: int) -> set[int]:
    """Every process below ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class Dev:
    """A running `emailqueue dev`: its output, port, directory and process tree."""

    def __init__(self, proc: subprocess.Popen[str], cwd: Path, port: int) -> None:
        self.proc, self.cwd, self.port = proc, cwd, port
        self.lines: list[str] = []
        self.tree: set[int] = set()
        assert proc.stdout is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
        self._reader.daemon = True
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self, project: Path | None = None) -> dict[str, object]:
        data: dict[str, object] = json.loads(((project or self.cwd) / ".emailqueue" / "dev.json").read_text())
        return data

    def wait_ready(self, timeout: float = 60) -> None:
        """Until dev says the API is on (it says so only once the API answers)."""
        wait_for(lambda: "API on" in self.output or self.proc.poll() is not None, timeout, "dev to start")
        assert self.proc.poll() is None, f"dev exited:\n{self.output}"
        self.tree |= descendants(self.proc.pid)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.tree |= descendants(self.proc.pid)
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._reader.join(5)
            if self.proc.stdout:
                self.proc.stdout.close()
        return code

    def leftovers(self) -> list[int]:
        """Processes of dev's tree still alive after it stopped (killed, so no test leaks them)."""
        alive = sorted(pid for pid in self.tree if pid_alive(pid))
        for pid in alive:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return alive


@contextmanager
def running_dev(
    cwd: Path, *args: str, env: dict[str, str] | None = None, ready: bool = True
) -> Iterator[Dev]:
    """Start `emailqueue dev --port <free>` in ``cwd``; stop it (SIGINT) and reap its tree after."""
    port = free_port()
    proc = subprocess.Popen(
        [EXE, "dev", "--port", str(port), *args],
        cwd=cwd,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    dev = Dev(proc, cwd, port)
    try:
        if ready:
            dev.wait_ready()
        yield dev
    finally:
        if proc.poll() is None:
            dev.stop()
        dev.leftovers()


def api_answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
    except httpx.HTTPError:
        return False
    return True
