"""End to end: the README's VM worker command, run as a real subprocess, delivers a fan-out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis
from rq import Queue

from emailqueue import Settings, send_event_email
from emailqueue.testing import FakeResend
from tests.helpers.rq_helpers import registry_counts

RQ = str(Path(sys.executable).with_name("rq"))


def test_documented_rq_worker_command_delivers_50_recipients_exactly_once(
    real_conn: redis.Redis, redis_url: str, settings: Settings, fake_resend: FakeResend
) -> None:
    queue = Queue(settings.email_queue_name, connection=real_conn)
    people = [f"guest{i}@example.com" for i in range(50)]
    ids = send_event_email(
        "gala-2026", people, "You're invited", html="<p>Come!</p>", queue=queue, settings=settings
    )
    assert len(ids) == 1  # one chunk job: one POST /emails/batch for all 50

    env = {
        **os.environ,
        "QUEUE_REDIS_URL": redis_url,
        "RESEND_API_KEY": fake_resend.api_key,
        "RESEND_API_URL": fake_resend.url,
        "RESEND_RATE_LIMIT": "0",
    }
    # README: rq worker --with-scheduler --serializer json --url "$QUEUE_REDIS_URL" emails  (+ --burst)
    done = subprocess.run(
        [
            RQ,
            "worker",
            "--with-scheduler",
            "--serializer",
            "json",
            "--url",
            env["QUEUE_REDIS_URL"],
            "emails",
            "--burst",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    accepted = fake_resend.accepted
    assert len(accepted) == 50
    assert sorted(e.to[0] for e in accepted) == sorted(people)
    assert all(e.headers.get("user-agent", "").startswith("emailqueue/") for e in accepted)
    assert all(e.batch for e in accepted)  # one POST /emails/batch, one Idempotency-Key for all 50
    assert {e.idempotency_key for e in accepted} == {f"emailqueue-{ids[0]}"}
    assert registry_counts(queue) == {"queued": 0, "started": 0, "scheduled": 0, "failed": 0}
    assert list(real_conn.scan_iter(match="rq:job:*")) == []
    # No recipient's address appears in the worker's log: RQ logs our masked description.
    assert "guest1@example.com" not in done.stderr + done.stdout
