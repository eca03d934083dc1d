"""`emailqueue dev` on a fresh laptop: no Redis URL, no Resend key, nothing on 6379.

It must start an embedded Valkey, the API and a worker; deliver to the local outbox within
seconds; serve the outbox page; and stop everything on Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import redis

SCRUB = [
    "QUEUE_REDIS_URL",
    "REDIS_URL",
    "KV_URL",
    "RESEND_API_KEY",
    "CRON_SECRET",
    "QUEUE_ADMIN_TOKEN",
    "EMAILQUEUE_DEV",
    "VERCEL_ENV",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_runs_api_and_worker_on_embedded_redis_with_outbox(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    port, closed = free_port(), free_port()  # `closed`: stands in for "nothing on 6379"
    exe = str(Path(sys.executable).with_name("emailqueue"))
    proc = subprocess.Popen(
        [exe, "dev", "--no-reload", "--port", str(port), "--probe-url", f"redis://127.0.0.1:{closed}/0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        state = tmp_path / ".emailqueue" / "dev.json"
        wait_for(state.exists, 30, "the dev state file")
        redis_url = json.loads(state.read_text())["redis_url"]
        server_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
        wait_for(lambda: _up(port), 30, "the API")

        # The library, started in the same directory with no configuration, finds the embedded Redis.
        job_id = subprocess.run(
            [
                sys.executable,
                "-c",
                "from emailqueue import send_email; print(send_email(from_='a@example.com',"
                " to='ada@example.com', subject='Hello from dev', html='<p>hi</p>'))",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        assert job_id.startswith("em_")

        outbox = tmp_path / ".emailqueue" / "outbox"
        wait_for(lambda: list(outbox.glob("*.json")), 15, "the email in the outbox")
        (entry,) = [json.loads(p.read_text()) for p in outbox.glob("*.json")]
        assert entry["email"]["to"] == ["ada@example.com"]
        assert entry["idempotency_key"] == f"emailqueue-{job_id}"
        assert list(outbox.glob("*.html"))

        page = httpx.get(f"http://127.0.0.1:{port}/api/dev/outbox", timeout=5)
        assert page.status_code == 200
        assert "Hello from dev" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(5)
        if proc.stdout:
            proc.stdout.close()
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "embedded Valkey" in output and "NOTHING IS SENT" in output
    assert "[api]" in output and "[worker]" in output
    assert not pid_alive(server_pid), "the embedded server is still running"
    assert not state.exists()
    # The API, and the worker (its Redis URL is in its environment, not its command line).
    for pattern in (f"--port {port}", "emailqueue._worker worker --with-scheduler --serializer json emails$"):
        orphans = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        assert orphans.strip() == "", f"orphan process matching {pattern!r}: {orphans}"


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code in (200, 503)
    except httpx.HTTPError:
        return False
