"""Measure how long a due retry waits after a ``--with-scheduler`` VM worker dies, with drains alone.

    python scripts/measure_scheduler_death.py [--drain-every S]

Starts its own Valkey and fake Resend. One email fails once (500) in a drain and is scheduled to
retry about 3 s later. A ``rq worker --with-scheduler`` starts, takes the scheduler lock, and is
SIGKILLed (its whole process tree) before the retry is due. From then on only drains run, one
every ``--drain-every`` seconds (default 1; a Vercel cron runs once a minute, which adds up to
that much). Prints the seconds from the kill to the retry's acceptance by the fake Resend, and
whether the dead scheduler's lock still existed then. Real time: this takes up to ~75 s.

Run it against another checkout (e.g. main before issue 15) with ``PYTHONPATH=<that checkout>``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from rq.scheduler import RQScheduler

import emailqueue
from emailqueue import Settings, drain, send_email
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend

RQ = str(Path(sys.executable).parent / "rq")


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drain-every", type=float, default=1.0)
    args = parser.parse_args()
    print(f"emailqueue from {Path(emailqueue.__file__).parent}", flush=True)
    with EmbeddedRedis() as server, FakeResend() as fake:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            queue_redis_url=server.url,
            email_from="app@example.com",
            resend_api_key=fake.api_key,  # type: ignore[arg-type]
            resend_api_url=fake.url,
            resend_rate_limit=0,
            email_backoff_base_s=6,  # equal jitter: the retry is due 3-6 s later
        )
        conn = redis.Redis.from_url(server.url)
        fake.fail_next(1, 500, "internal_server_error")
        send_email(to="a@example.com", subject="Hi", text="x", connection=conn, settings=settings)
        assert drain(connection=conn, settings=settings).retrying == 1
        due = float(conn.zrange("rq:scheduled:emails", 0, 0, withscores=True)[0][1])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "RESEND_", "EMAIL_"))}
        env.update(QUEUE_REDIS_URL=server.url, RESEND_API_KEY=fake.api_key, RESEND_API_URL=fake.url)
        worker = subprocess.Popen(
            [RQ, "worker", "--with-scheduler", "--serializer", "json", "--url", server.url, "emails"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lock = RQScheduler.get_locking_key("emails")
        while not conn.exists(lock):
            time.sleep(0.01)
        os.kill(worker.pid, signal.SIGSTOP)
        for pid in _tree(worker.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait()
        killed = time.time()
        print(
            f"worker killed; retry due {due - killed:.1f} s later; lock TTL {conn.pttl(lock)} ms", flush=True
        )
        while not fake.accepted:
            drain(connection=conn, settings=settings)
            time.sleep(args.drain_every)
        sent = time.time()
        print(
            f"retry sent {sent - killed:.1f} s after the kill ({sent - due:.1f} s after it was due); "
            f"dead scheduler's lock still there: {bool(conn.exists(lock))}",
            flush=True,
        )


if __name__ == "__main__":
    main()
