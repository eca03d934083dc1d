"""d. Resend answers ``monthly_quota_exceeded`` (429) for a while, then recovers: the emails wait
in the scheduled registry without spending attempts, and are delivered once the quota is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue import drain, send_email, send_event_email
from emailqueue.testing import FakeResend

from .conftest import make_settings, people
from .ledger import Ledger, registry_sizes

pytestmark = pytest.mark.real_redis

QUOTA_RETRY_S = 600
QUOTA_ROUNDS = 3
MAX_ATTEMPTS = 2  # a quota error that spent an attempt would fail these emails in round 2


def test_monthly_quota_exceeded_waits_without_spending_attempts(
    real_conn: redis.Redis, redis_url: str, fake_resend: FakeResend, new_ledger: Callable[[str], Ledger]
) -> None:
    """Scenario d: 4 single emails and a 5-recipient fan-out (one batch job) meet Resend's
    monthly quota three runs in a row. Each time they are scheduled EMAIL_QUOTA_RETRY_S ahead
    with ``retries_left`` unchanged (EMAIL_MAX_ATTEMPTS=2 would otherwise fail them); a run before
    that does nothing; once the quota is back, every email is delivered once and none failed."""
    settings = make_settings(
        fake_resend, redis_url, email_max_attempts=MAX_ATTEMPTS, email_quota_retry_s=QUOTA_RETRY_S
    )
    ledger = new_ledger("d/monthly-quota-then-recovery")
    singles = people(4, "q")
    ids = [send_email(to=a, subject="Hi", text="x", connection=real_conn, settings=settings) for a in singles]
    guests = people(5, "qg")
    ids += send_event_email("quota-week", guests, "News", text="x", connection=real_conn, settings=settings)
    ledger.expect(singles + guests)
    fake_resend.fail_next(
        len(ids) * QUOTA_ROUNDS, 429, "monthly_quota_exceeded", "You have reached your monthly quota."
    )
    # Retries are scheduled from the real time of each failure: each later run jumps past the wait.
    offset = 0.0
    for _ in range(QUOTA_ROUNDS):
        start = time.time()
        report = drain(connection=real_conn, settings=settings, wall_clock=lambda o=offset: time.time() + o)
        assert (report.processed, report.retrying, report.failed, report.sent) == (len(ids), len(ids), 0, 0)
        for job_id in ids:
            job = Job.fetch(job_id, connection=real_conn, serializer=JSONSerializer)
            assert job.retries_left == MAX_ATTEMPTS - 1, f"{job_id} spent an attempt on the quota"
            assert job.get_status() == "scheduled"
            assert job.meta["emailqueue"]["error"]["name"] == "monthly_quota_exceeded"
            assert job.meta["emailqueue"]["next_retry_in_s"] >= QUOTA_RETRY_S / 2
        due = real_conn.zrange("rq:scheduled:emails", 0, -1, withscores=True)
        assert len(due) == len(ids) and min(score for _, score in due) >= start + QUOTA_RETRY_S / 2 - 1
        # A run before the quota wait is over leaves them alone.
        early = drain(connection=real_conn, settings=settings, wall_clock=lambda: time.time() + 60)
        assert early.processed == 0
        offset = QUOTA_RETRY_S + 1
    report = drain(connection=real_conn, settings=settings, wall_clock=lambda: time.time() + offset)
    assert (report.promoted, report.sent, report.failed) == (len(ids), len(singles) + len(guests), 0)
    counts = ledger.finish(
        quota_rounds=QUOTA_ROUNDS,
        max_attempts=MAX_ATTEMPTS,
        http_429=sum(r.status == 429 for r in fake_resend.requests),
    )
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert registry_sizes(real_conn)["failed"] == 0
