"""Simulate a crash of the Redis host (power cut, kernel panic, VM gone), not just of the process.

A process kill loses nothing Redis wrote to its AOF: the bytes are in the OS page cache and reach
the disk anyway. A host crash loses what was not yet fsynced. The simulation:

1. runs a valkey-server with an AOF under an ``LD_PRELOAD`` shim (``fsync_log.c``) that logs, for
   every ``fsync``/``fdatasync`` that returned, the file and its size before the call;
2. sends emails and notes each call that returned to its caller (acknowledged);
3. SIGKILLs the server right after the last acknowledged call, and truncates every AOF file to its
   size at its last completed fsync: the disk as the crash would have left it;
4. restarts the server on those files and counts the acknowledged emails whose job is gone.

What it models and what it doesn't: the server's own fsyncs, exactly (what the disk held at the
instant of the crash, file by file, followed across renames by inode); a file never fsynced is
empty. It assumes an fsync that returned is on the platter (a disk that lies about its cache is
worse), and that renames and directory entries survived. Writes made after the last fsync are
dropped whole; a real crash may keep some of them (the kernel flushes dirty pages on its own
within ~30 s). So it measures the worst case of the fsync policy, not of a particular disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from emailqueue import Settings, send_email, send_event_email
from emailqueue._durable import CAPABILITIES
from emailqueue._embedded import EmbeddedRedis

SHIM_SOURCE = Path(__file__).with_name("fsync_log.c")


def build_shim(directory: Path) -> Path:
    """Compile the fsync logger (needs a C compiler: ``cc``)."""
    out = directory / "fsync_log.so"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("the host-crash simulation needs a C compiler (cc or gcc) on PATH")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SHIM_SOURCE), "-ldl"], check=True)
    return out


@dataclass(frozen=True)
class CrashResult:
    """One simulated host crash. ``window_ms``: from the last completed fsync to the crash."""

    policy: str
    durable: bool
    waitaof: bool
    acknowledged: int
    lost: int
    fanout_recipients: int
    fanout_lost: int
    calls_per_s: float
    window_ms: float


def _last_fsyncs(log: Path) -> tuple[dict[int, int], int]:
    """inode -> its size at its last completed fsync; and when the last fsync returned (ns)."""
    sizes: dict[int, int] = {}
    last_ns = 0
    if log.exists():
        for line in log.read_text().splitlines():
            _, size, ns, inode = line.rsplit(" ", 3)
            sizes[int(inode)] = int(size)
            last_ns = max(last_ns, int(ns))
    return sizes, last_ns


def crash_disk(data: Path, log: Path) -> int:
    """Leave every file under ``data`` as its last fsync left it; returns the last fsync's time."""
    sizes, last_ns = _last_fsyncs(log)
    for path in data.rglob("*"):
        if path.is_file() and path.name != "server.log":
            os.truncate(path, min(sizes.get(path.stat().st_ino, 0), path.stat().st_size))
    return last_ns


def simulate(
    shim: Path,
    settings: Settings,
    *,
    policy: str = "everysec",
    durable: bool = False,
    duration_s: float = 1.0,
    fanout: int = 0,
    waitaof: bool = False,
) -> CrashResult:
    """Send single emails for ``duration_s`` (then, with ``fanout``, one ``send_event_email`` to
    that many recipients, the call just before the crash), crash the host, count the losses.
    ``waitaof``: follow each default call with ``WAITAOF 1 0 1500`` and count a call as
    acknowledged only once that returned ``[1, _]`` (what trusting WAITAOF under any policy would
    give)."""
    CAPABILITIES.clear()
    with tempfile.TemporaryDirectory(prefix="emailqueue-crash-") as tmp:
        data, log = Path(tmp) / "data", Path(tmp) / "fsync.log"
        server = EmbeddedRedis(data_dir=data, appendonly=True, extra_args=["--appendfsync", policy])
        saved = {k: os.environ.get(k) for k in ("LD_PRELOAD", "FSYNC_LOG")}
        os.environ.update(LD_PRELOAD=str(shim), FSYNC_LOG=str(log))
        try:
            server.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        try:
            run = settings.model_copy(update={"queue_redis_url": server.url})
            conn = redis.Redis.from_url(server.url)
            acked: list[str] = []
            started = time.monotonic()
            while time.monotonic() - started < duration_s or not acked:
                job_id = send_email(
                    to=f"u{len(acked)}@example.com", subject="Hi", text="x", connection=conn, settings=run,
                    durable=durable,
                )  # fmt: skip
                if waitaof:
                    assert conn.execute_command("WAITAOF", 1, 0, 1500)[0] == 1
                acked.append(job_id)
            elapsed = time.monotonic() - started
            fanned: list[str] = []
            if fanout:
                people = [f"guest{i}@example.com" for i in range(fanout)]
                fanned = send_event_email("launch", people, "Hi", text="x", connection=conn, settings=run,
                                          durable=durable)  # fmt: skip
                if waitaof:
                    assert conn.execute_command("WAITAOF", 1, 0, 1500)[0] == 1
            crashed_ns = time.monotonic_ns()
            server.kill()
            conn.close()
            last_ns = crash_disk(data, log)
            server.restart()
            after = redis.Redis.from_url(server.url)
            lost = sum(not after.exists(f"rq:job:{job_id}") for job_id in acked)
            fanout_lost = sum(not after.exists(f"rq:job:{job_id}") for job_id in fanned)
            after.close()
        finally:
            server.stop()
    per_chunk = fanout / len(fanned) if fanned else 0
    return CrashResult(
        policy=policy,
        durable=durable,
        waitaof=waitaof,
        acknowledged=len(acked),
        lost=lost,
        fanout_recipients=fanout,
        fanout_lost=int(fanout_lost * per_chunk),
        calls_per_s=len(acked) / elapsed,
        window_ms=(crashed_ns - last_ns) / 1e6 if last_ns else float("nan"),
    )
