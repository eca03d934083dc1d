"""Dev's idle CPU: ``emailqueue dev`` in a project holding a virtualenv, doing nothing.

The whole process tree counts (dev itself, the API, the worker and its scheduler, the embedded
server), from the kernel's own CPU accounting (``/proc/<pid>/stat``: user + system time), over a
window of wall time after the API answers. The baseline is what any RQ setup costs idle: a stock
``rq worker --with-scheduler`` on the same kind of embedded server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from emailqueue._embedded import EmbeddedRedis

_TICKS = os.sysconf("SC_CLK_TCK")
_SCRUB = ("QUEUE_REDIS_URL", "REDIS_URL", "KV_URL", "RESEND_API_KEY", "EMAILQUEUE_DEV", "VERCEL_ENV")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant, from /proc (no process is matched by name)."""
    tree, pids, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, []))
    return pids


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def tree_cpu_s(root: int) -> dict[int, float]:
    return {pid: _cpu_s(pid) for pid in tree_pids(root)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.1)


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def _measure(proc: subprocess.Popen[bytes], window_s: float, settle_s: float) -> float:
    time.sleep(settle_s)
    before = tree_cpu_s(proc.pid)
    time.sleep(window_s)
    after = tree_cpu_s(proc.pid)
    # Only processes alive at both ends: an idle stack starts and ends none.
    used = sum(after[pid] - before[pid] for pid in after if pid in before)
    return 100.0 * used / window_s


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make_project(root: Path, *, pip: bool = True) -> Path:
    """A project directory holding a real virtualenv (with pip: about a thousand .py files)."""
    argv = [sys.executable, "-m", "venv", str(root / "venv")] + ([] if pip else ["--without-pip"])
    subprocess.run(argv, check=True, capture_output=True)
    (root / "app.py").write_text("print('my app')\n")
    return root


def dev_idle_pct(
    window_s: float = 30.0, settle_s: float = 3.0, extra: tuple[str, ...] = (), *, pip: bool = True
) -> float:
    """% of one core the whole ``emailqueue dev`` tree uses while idle, in a dir with a venv."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    exe = str(Path(sys.executable).with_name("emailqueue"))
    with (
        tempfile.TemporaryDirectory(prefix="eq-devidle-") as tmp,
        tempfile.NamedTemporaryFile(prefix="eq-devidle-", suffix=".log", delete=False) as log,
    ):
        project, port = make_project(Path(tmp), pip=pip), _free_port()
        proc = subprocess.Popen(
            [exe, "dev", "--port", str(port), *extra],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait(lambda: _answers(port) or proc.poll() is not None, 60)
            if proc.poll() is not None:
                raise RuntimeError(f"emailqueue dev exited: {log.name}")
            return _measure(proc, window_s, settle_s)
        finally:
            _stop(proc)


def rq_idle_pct(window_s: float = 30.0, settle_s: float = 3.0) -> float:
    """The baseline: a stock ``rq worker --with-scheduler`` and its server, idle."""
    with EmbeddedRedis() as server:
        env = {**os.environ, "RQ_REDIS_URL": server.url}
        worker = subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "--with-scheduler", "--serializer", "json", "emails"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            pid = server.pid
            assert pid is not None
            time.sleep(settle_s)
            before = {**tree_cpu_s(worker.pid), pid: _cpu_s(pid)}
            time.sleep(window_s)
            after = {**tree_cpu_s(worker.pid), pid: _cpu_s(pid)}
            return 100.0 * sum(after[p] - before[p] for p in after if p in before) / window_s
        finally:
            worker.terminate()
            worker.wait(30)


def idle_sample(window_s: float, *, pip: bool = True) -> dict[str, float]:
    """One repetition of bench row 9: dev and the raw-RQ baseline, the same window each."""
    settle = min(3.0, window_s)
    return {
        "raw_idle_cpu_pct": rq_idle_pct(window_s, settle),
        "dev_idle_cpu_pct": dev_idle_pct(window_s, settle, pip=pip),
    }


def main() -> None:
    """``python -m bench._devidle [SECONDS] [DEV ARGS...]``: both figures, printed."""
    window = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    extra = tuple(sys.argv[2:])
    print(f"rq worker + server idle: {rq_idle_pct(window):.2f}% of one core over {window:g} s")
    pct = dev_idle_pct(window, extra=extra)
    args = " ".join(extra)
    print(f"emailqueue dev {args} idle (venv in the project): {pct:.2f}% of one core over {window:g} s")


if __name__ == "__main__":
    main()
