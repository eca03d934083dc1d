"""Measure VM worker throughput: the plain ``rq worker`` command vs ``emailqueue worker``.

    python scripts/measure_vm_worker.py [N]

Starts its own Valkey and fake Resend, queues N single emails (default 30) for each, runs each
worker in burst mode, and prints jobs per second (process start included).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from emailqueue import Settings, send_email
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend

BIN = Path(sys.executable).parent


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with EmbeddedRedis() as server, FakeResend() as fake:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            queue_redis_url=server.url,
            email_from="app@example.com",
            resend_api_key=fake.api_key,  # type: ignore[arg-type]
            resend_api_url=fake.url,
        )
        conn = redis.Redis.from_url(server.url)
        env = {
            **os.environ,
            "QUEUE_REDIS_URL": server.url,
            "RESEND_API_KEY": fake.api_key,
            "RESEND_API_URL": fake.url,
            "RESEND_RATE_LIMIT": "0",
        }
        commands = {
            "rq worker": [
                str(BIN / "rq"),
                "worker",
                "--with-scheduler",
                "--serializer",
                "json",
                "--url",
                server.url,
                "emails",
                "--burst",
            ],
            "emailqueue worker": [str(BIN / "emailqueue"), "worker", "--burst"],
        }
        for label, argv in commands.items():
            for i in range(n):
                send_email(
                    to=f"{label[:2]}{i}@example.com",
                    subject="s",
                    text="t",
                    connection=conn,
                    settings=settings,
                )
            start = time.monotonic()
            subprocess.run(argv, env=env, capture_output=True, check=True)
            elapsed = time.monotonic() - start
            print(f"{label}: {n} jobs in {elapsed:.1f} s = {n / elapsed:.1f} jobs/s")
        conn.close()


if __name__ == "__main__":
    main()
