"""A VM worker running ``--with-scheduler`` dies (SIGKILL of its whole process tree) while a retry
is due: drains alone send the retry without waiting for the dead scheduler's lock to expire.

Fact (docs/PLATFORM.md, RQ: scheduler lock): RQ 3's scheduler holds ``rq:scheduler-lock:<queue>``
with a TTL of ``interval + 60`` s (61 s), refreshed every ``interval`` s by a live scheduler; a
SIGKILLed one leaves it for the rest of that TTL. Time is a parameter here: the drains run with a
clock 10,000 s ahead (the retry is due for them), and the server is "aged" by lowering every
key's TTL as that many seconds would (no real waiting).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from rq.scheduler import RQScheduler

from emailqueue import drain, send_email
from emailqueue._scripts import SCHEDULER_STALE_S
from emailqueue.testing import FakeResend

from .conftest import make_settings
from .faults import later_clock, sigkill_tree, start_rq_worker, stop_worker, wait_for, worker_env

pytestmark = pytest.mark.real_redis

LOCK = RQScheduler.get_locking_key("emails")


def age_ttls(conn: redis.Redis, seconds: float) -> None:
    """Every key with a TTL, as it would be ``seconds`` later (expired keys deleted)."""
    for key in conn.scan_iter(count=1000):
        left = conn.pttl(key)
        if left < 0:
            continue
        if left <= seconds * 1000:
            conn.delete(key)
        else:
            conn.pexpire(key, int(left - seconds * 1000))


def test_retries_behind_a_killed_schedulers_lock_are_sent_by_drains_alone(
    real_conn: redis.Redis, redis_url: str, fake_resend: FakeResend, tmp_path: Path
) -> None:
    # A retry scheduled 30-60 s ahead in real time: the live scheduler leaves it alone.
    settings = make_settings(fake_resend, redis_url, email_backoff_base_s=60, email_backoff_cap_s=120)
    fake_resend.fail_next(1, 500, "internal_server_error")
    job_id = send_email(to="a@example.com", subject="Hi", text="x", connection=real_conn, settings=settings)
    assert drain(connection=real_conn, settings=settings).retrying == 1
    env = worker_env(redis_url, fake_resend.api_key, fake_resend.url)
    with open(tmp_path / "rq-worker.log", "wb") as log:
        worker = start_rq_worker(redis_url, env, log, tmp_path)
        try:
            wait_for(lambda: real_conn.exists(LOCK), 30, "the worker's scheduler to take its lock")
            # While the scheduler lives, the drain leaves due retries to it.
            assert drain(connection=real_conn, settings=settings, wall_clock=later_clock).promoted == 0
        finally:
            sigkill_tree(worker)
            stop_worker(worker)
    assert real_conn.exists(LOCK) == 1  # the dead scheduler's lock stays for up to 61 s
    assert drain(connection=real_conn, settings=settings, wall_clock=later_clock).promoted == 0
    # A few seconds later the lock is still fresh enough to belong to a live scheduler.
    age_ttls(real_conn, SCHEDULER_STALE_S / 2)
    assert drain(connection=real_conn, settings=settings, wall_clock=later_clock).promoted == 0
    # SCHEDULER_STALE_S + 1 s (a refresh period) after the death: its owner is taken for dead.
    age_ttls(real_conn, SCHEDULER_STALE_S / 2 + 1)
    report = drain(connection=real_conn, settings=settings, wall_clock=later_clock)
    assert (report.promoted, report.sent) == (1, 1)
    assert real_conn.exists(LOCK) == 1  # sent while the dead scheduler's lock still exists
    assert [r.status for r in fake_resend.requests] == [500, 200]
    assert len({r.headers["idempotency-key"] for r in fake_resend.requests}) == 1
    assert real_conn.exists(f"rq:job:{job_id}") == 0
