"""The retry path on a VM worker alone: ``rq worker --with-scheduler`` with no drain at all.

RQ's own scheduler (a process of the worker) brings retries back; it schedules in whole seconds,
so the backoff and the quota wait are 1 s here.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from emailqueue import send_email
from emailqueue.testing import FakeResend

from .conftest import make_settings
from .faults import process_tree, start_rq_worker, stop_worker, wait_for, worker_env
from .ledger import Ledger, stuck_count

pytestmark = pytest.mark.real_redis


@pytest.mark.slow
def test_vm_worker_alone_retries_a_500_then_waits_out_a_quota_without_spending_an_attempt(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """VM worker only: an email with EMAIL_MAX_ATTEMPTS=2 meets a 500 (its one retry is spent),
    then ``monthly_quota_exceeded`` (no attempt spent, so it is kept), then goes out: delivered
    once, nothing failed, nothing left in any registry, all within a few seconds."""
    settings = make_settings(fake_resend, redis_url, email_max_attempts=2, email_backoff_base_s=1)
    ledger = new_ledger("vm-worker-only/retry-500-then-quota")
    send_email(to="vm@example.com", subject="Hi", text="x", connection=real_conn, settings=settings)
    ledger.expect(["vm@example.com"])
    fake_resend.fail_next(1, 500, "internal_server_error")
    fake_resend.fail_next(1, 429, "monthly_quota_exceeded", retry_after=0)
    env = worker_env(
        redis_url,
        fake_resend.api_key,
        fake_resend.url,
        EMAIL_BACKOFF_BASE_S="1",
        EMAIL_BACKOFF_CAP_S="1",
        EMAIL_QUOTA_RETRY_S="1",
    )
    with open(tmp_path / "rq-worker.log", "wb") as log:
        worker = start_rq_worker(redis_url, env, log, tmp_path)
        try:
            wait_for(lambda: fake_resend.accepted, 20, "the email to go out")
            wait_for(lambda: stuck_count(real_conn) == 0, 10, "the worker to finish the job")
        finally:
            rc = stop_worker(worker)
    counts = ledger.finish(http=[r.status for r in fake_resend.requests], worker_exit=rc)
    assert [r.status for r in fake_resend.requests] == [500, 429, 200]
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts


def work_horse(worker_pid: int) -> int:
    """The worker's current work horse: the descendant RQ put in a process group of its own
    (``os.setpgrp()`` after the fork); the scheduler process stays in the worker's group."""
    horses = [pid for pid in process_tree(worker_pid)[1:] if os.getpgid(pid) == pid]
    assert len(horses) == 1, horses
    return horses[0]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["in_flight", "accepted"])
def test_vm_worker_alone_recovers_when_its_work_horse_is_killed_mid_send(
    point: str,
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """VM worker only: the kernel's OOM killer SIGKILLs the work horse while its request is at
    Resend (``in_flight``: Resend accepts it afterwards) or after Resend accepted it with the reply
    still on the way (``accepted``). The surviving worker fails the job over to RQ's retry (1 s),
    its scheduler brings it back, and the re-send under the same key is answered from Resend's
    idempotency cache: delivered once, nothing failed, nothing left behind."""
    settings = make_settings(fake_resend, redis_url, email_backoff_base_s=1)
    ledger = new_ledger(f"vm-worker-only/work-horse-killed-{point}")
    send_email(to="horse@example.com", subject="Hi", text="x", connection=real_conn, settings=settings)
    ledger.expect(["horse@example.com"])
    gate = fake_resend.hold() if point == "in_flight" else None
    if point == "accepted":
        fake_resend.timeout_after_accept(1, 0.5)
    env = worker_env(redis_url, fake_resend.api_key, fake_resend.url, EMAIL_BACKOFF_BASE_S="1")
    with open(tmp_path / "rq-worker.log", "wb") as log:
        worker = start_rq_worker(redis_url, env, log, tmp_path)
        try:
            if gate is not None:
                assert gate.arrived.wait(20), "the request never reached Resend"
            else:
                wait_for(lambda: fake_resend.accepted, 20, "the accept")
            os.kill(work_horse(worker.pid), signal.SIGKILL)
            if gate is not None:
                gate.release()
            wait_for(lambda: fake_resend.replays > 0, 20, "the re-send under the same key")
            wait_for(lambda: stuck_count(real_conn) == 0, 10, "the worker to finish the job")
        finally:
            if gate is not None:
                gate.release()
            rc = stop_worker(worker)
    counts = ledger.finish(point=point, http=[r.status for r in fake_resend.requests], worker_exit=rc)
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert counts.replays >= 1 and counts.accepted == 1
