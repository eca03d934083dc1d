"""Batch fan-out: chunk jobs of up to 100 personal emails, one POST /emails/batch each
(docs/PLATFORM.md "Resend": batch of at most 100, permissive validation, one Idempotency-Key;
no attachments or scheduled_at in a batch)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from emailqueue import Settings, drain, queue_status, send_event_email
from emailqueue._enqueue import prepare_single, write_jobs
from emailqueue._message import EmailMessage
from emailqueue.testing import FakeResend
from tests.helpers.rq_helpers import registry_counts


def people(n: int, start: int = 0) -> list[str]:
    return [f"guest{i}@example.com" for i in range(start, start + n)]


def batch_requests(fake: FakeResend) -> list[list[dict[str, object]]]:
    return [json.loads(r.body) for r in fake.requests if r.path == "/emails/batch"]


def test_250_recipients_become_3_chunks_each_one_batch_call(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    ids = send_event_email(
        "gala", people(250), "Invite", html="<p>Come</p>", connection=conn, settings=settings
    )
    assert len(ids) == 3 and all(i.startswith("eb_") for i in ids)
    report = drain(connection=conn, settings=settings)
    assert (report.processed, report.sent, report.failed) == (3, 250, 0)
    assert sorted(len(b) for b in batch_requests(fake_resend)) == [50, 100, 100]
    batch_calls = [r for r in fake_resend.requests if r.path == "/emails/batch"]
    assert {r.headers["x-batch-validation"] for r in batch_calls} == {"permissive"}
    assert {r.headers["idempotency-key"] for r in batch_calls} == {f"emailqueue-{i}" for i in ids}
    # One personal email per recipient: nobody sees another address.
    assert all(len(e.to) == 1 for e in fake_resend.accepted)
    assert sorted(e.to[0] for e in fake_resend.accepted) == sorted(people(250))
    assert list(conn.scan_iter(match="rq:job:*")) == []


def test_attachments_and_send_at_go_as_single_sends(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    attachment = {"filename": "a.txt", "content": base64.b64encode(b"hi").decode()}
    ids = send_event_email(
        "a", people(3), "S", text="t", attachments=[attachment], connection=conn, settings=settings
    )
    later = datetime.now(UTC) + timedelta(days=1)
    ids += send_event_email("b", people(2), "S", text="t", send_at=later, connection=conn, settings=settings)
    assert len(ids) == 5 and all(i.startswith("ev_") for i in ids)
    drain(connection=conn, settings=settings)
    assert not batch_requests(fake_resend)
    assert len(fake_resend.accepted) == 5


def test_rejected_recipients_fail_alone_and_show_in_status(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.reject_recipients = {"guest3@example.com"}
    send_event_email("gala", people(10), "Invite", text="x", connection=conn, settings=settings)
    report = drain(connection=conn, settings=settings)
    assert (report.sent, report.failed, report.retrying) == (9, 1, 0)
    # The valid nine were sent once, and are not sent again by later runs.
    drain(connection=conn, settings=settings)
    assert sorted(e.to[0] for e in fake_resend.accepted) == sorted(set(people(10)) - {"guest3@example.com"})
    status = queue_status(conn, settings).to_dict()
    (failed,) = status["recent_failed"]
    assert failed["to"] == ["g***@example.com"]
    assert failed["error"]["name"] == "rejected_recipient"
    assert status["failed"] == 1 and status["queued"] == status["scheduled"] == 0


def test_dedup_holds_across_chunks_and_calls(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    first = send_event_email("gala", people(150), "Invite", text="x", connection=conn, settings=settings)
    assert len(first) == 2
    # The same event to an overlapping list: only the 100 new guests are queued.
    second = send_event_email("gala", people(250), "Invite", text="x", connection=conn, settings=settings)
    assert len(second) == 1
    drain(connection=conn, settings=settings)
    assert send_event_email("gala", people(250), "Invite", text="x", connection=conn, settings=settings) == []
    drain(connection=conn, settings=settings)
    recipients = [e.to[0] for e in fake_resend.accepted]
    assert sorted(recipients) == sorted(people(250))  # each exactly once


def test_a_transient_batch_failure_retries_with_the_same_key(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    (job_id,) = send_event_email("gala", people(20), "Invite", text="x", connection=conn, settings=settings)
    fake_resend.timeout_after_accept(1, delay=0.5)
    fast = settings.model_copy(update={"resend_timeout_s": 0.2})
    assert drain(connection=conn, settings=fast).retrying == 1
    assert len(fake_resend.accepted) == 20  # Resend took it; we didn't hear back

    def later() -> float:
        import time

        return time.time() + 10_000

    _wait_until_idle(fake_resend)
    drain(connection=conn, settings=fast, wall_clock=later)
    assert len(fake_resend.accepted) == 20 and fake_resend.replays == 1
    calls = [r for r in fake_resend.requests if r.path == "/emails/batch"]
    assert {r.headers["idempotency-key"] for r in calls} == {f"emailqueue-{job_id}"}


def _wait_until_idle(fake: FakeResend) -> None:
    import time

    deadline = time.monotonic() + 5
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_retried_write_of_the_same_call_is_recognized(conn: redis.Redis, settings: Settings) -> None:
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    message = EmailMessage(to=["a@example.com"], subject="s", text="t")
    job = prepare_single(message, queue=queue, settings=settings, dedup=["event", "e", "a@example.com"])
    assert write_jobs(conn, queue, [job], 86400, token="call-1").queued == [job.job_id]
    again = write_jobs(conn, queue, [job], 86400, token="call-1")  # as if redis-py resent the script
    assert again.queued == [] and set(again.taken.values()) == {"call-1"}
    other = write_jobs(conn, queue, [job], 86400, token="call-2")
    assert set(other.taken.values()) == {"call-1"}
    assert conn.llen("rq:queue:emails") == 1


def test_rq_info_counts_lean_path_jobs(real_conn: redis.Redis, redis_url: str, settings: Settings) -> None:
    send_event_email("gala", people(150), "Invite", text="x", connection=real_conn, settings=settings)
    rq = str(Path(sys.executable).with_name("rq"))
    out = subprocess.run(
        [rq, "info", "--url", redis_url, "--serializer", "json", "emails"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "emails" in out and " 2, 0 executing, 0 finished, 0 failed" in out
    assert registry_counts(Queue("emails", connection=real_conn)) == {
        "queued": 2,
        "started": 0,
        "scheduled": 0,
        "failed": 0,
    }
