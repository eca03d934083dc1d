"""c. Load under faults: 1,000 emails through three overlapping drains and a VM ``rq worker``
while Resend fails 5% of requests with 500, 5% with 429 (``retry-after``) and times out on 2%
after accepting the email. Every email arrives exactly once, except five addresses Resend refuses
for good, which end in the failed registry with the reason.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from emailqueue import DrainReport, Settings, drain, send_email, send_event_email
from emailqueue.testing import FakeResend

from .conftest import make_settings, people, recover
from .faults import start_rq_worker, stop_worker, wait_for, worker_env
from .ledger import Ledger, registry_sizes, stuck_count

pytestmark = pytest.mark.real_redis

#: The client's read timeout; an injected timeout replies this much later than it, so the retry
#: may meet Resend still busy with the first request (409 concurrent_idempotent_requests).
READ_TIMEOUT_S = 0.3
LATE_BY_S = 0.1
#: How far a drain's clock jumps when only scheduled retries are left: past every retry delay
#: (backoff capped at 2 s; a 429's retry-after of 1 s becomes 2 s), well short of the 90 s after
#: which another sender's claim would count as abandoned.
JUMP_S = 30.0
#: The pause between two "later" runs (so a retry cannot come back faster than Resend finishes
#: the request it timed out on: no real retry comes back within LATE_BY_S).
TAIL_POLL_S = 0.1
DEADLINE_S = 80.0  # under pytest-timeout's 120 s per test


@pytest.mark.slow
@pytest.mark.parametrize("pack", [False, True], ids=["single", "packing"])
def test_1000_emails_through_3_drains_and_a_vm_worker_under_injected_faults(
    pack: bool,
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """Scenario c: 700 ``send_email`` + one 300-recipient ``send_event_email`` (3 batch jobs),
    delivered by 3 concurrent drains (threads, each with its own connection) and one
    ``rq worker --burst`` subprocess, while the fake injects 5% 500s, 5% 429s and 2% timeouts
    after accept, and refuses five addresses for good. Nothing is lost, nothing is sent twice,
    nothing is left in any registry, and the five refused recipients are failed with Resend's
    reason."""
    settings: Settings = make_settings(
        fake_resend,
        redis_url,
        email_max_attempts=10,
        resend_timeout_s=READ_TIMEOUT_S,
        resend_connect_timeout_s=2,
        email_pack=pack,
    )
    ledger = new_ledger("c/load-1000-3-drains-1-vm-worker" + ("-packing" if pack else ""))
    singles = people(700, "load")
    for address in singles:
        send_email(to=address, subject="Hi", text="x", connection=real_conn, settings=settings)
    crowd = people(300, "crowd")
    chunks = send_event_email("crowd-2026", crowd, "Hello", text="x", connection=real_conn, settings=settings)
    assert len(chunks) == 3
    ledger.expect(singles + crowd)
    # Five addresses Resend refuses for good: three single emails (422) and two batch recipients
    # (reported in the permissive batch reply). They must end failed, with the reason recorded.
    rejected = [singles[7], singles[300], singles[699], crowd[5], crowd[250]]
    fake_resend.reject_recipients = set(rejected)
    # Packing sends the singles in about a tenth as many requests: the faults come 4 times as
    # often or more, so that they still hit some of them.
    rates = (
        {"p500": 0.2, "p429": 0.2, "p_timeout": 0.08}
        if pack
        else {"p500": 0.05, "p429": 0.05, "p_timeout": 0.02}
    )
    fake_resend.set_error_rate(**rates, timeout_delay=READ_TIMEOUT_S + LATE_BY_S, seed=2026)
    env = worker_env(
        redis_url,
        fake_resend.api_key,
        fake_resend.url,
        EMAIL_BACKOFF_BASE_S="1",
        EMAIL_BACKOFF_CAP_S="2",
        RESEND_TIMEOUT_S=str(READ_TIMEOUT_S),
        RESEND_CONNECT_TIMEOUT_S="2",
    )
    reports: list[DrainReport] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + DEADLINE_S

    def run() -> None:
        conn = redis.Redis.from_url(redis_url)
        try:
            while time.monotonic() < deadline:
                report = drain(connection=conn, settings=settings, max_jobs=50)
                reports.append(report)
                if report.stopped != "empty":
                    continue
                if stuck_count(conn) == 0:
                    return
                # Only retries waiting for their time (or other senders' jobs) are left: a later run.
                time.sleep(TAIL_POLL_S)
                later = drain(
                    connection=conn, settings=settings, max_jobs=50, wall_clock=lambda: time.time() + JUMP_S
                )
                reports.append(later)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    with open(tmp_path / "rq-worker.log", "wb") as log:
        worker = start_rq_worker(redis_url, env, log, tmp_path, burst=True)
        try:
            # Let the VM worker get going first (it starts in about a second), so all four overlap.
            # Packing drains take a backlog in a few requests: let the worker deliver a few first.
            started = 5 if pack else 1
            wait_for(
                lambda: len(fake_resend.accepted) >= started or worker.poll() is not None,
                30,
                "the VM worker's start",
            )
            threads = [threading.Thread(target=run, name=f"drain-{i}") for i in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DEADLINE_S + 10)
            worker_rc = worker.wait(timeout=20)
        finally:
            stop_worker(worker)
    assert not errors, errors
    # Every process has ended: a last, later drain takes whatever a retry scheduled at the very end.
    sweep = recover(real_conn, settings, wall_clock=lambda: time.time() + JUMP_S)
    worker_jobs = (tmp_path / "rq-worker.log").read_text().count("Job OK")
    statuses = Counter(r.status for r in fake_resend.requests)
    counts = ledger.finish(
        drain_runs=len(reports),
        drain_jobs=sum(r.processed for r in reports),
        drain_retries=sum(r.retrying for r in reports),
        promoted=sum(r.promoted for r in reports),
        vm_worker_jobs_ok=worker_jobs,
        final_sweep_runs=len(sweep),
        packing=pack,
        packs=sum(r.packs for r in reports),
        largest_pack=max((r.largest_pack for r in reports), default=0),
        http=dict(sorted(statuses.items())),
    )
    assert worker_rc == 0
    assert (counts.lost, counts.duplicated, counts.duplicated_keys, counts.unexpected) == (0, 0, 0, 0), counts
    assert counts.stuck == 0, counts
    if pack:
        # A single email Resend refuses fails as a rejected batch recipient when it rode in a pack
        # (permissive validation), or with its own 422 when it went alone (after a retry).
        assert set(counts.failed_reasons) <= {"validation_error", "rejected_recipient"}, counts
        assert sum(counts.failed_reasons.values()) == 5, counts
    else:
        assert counts.failed_reasons == {"validation_error": 3, "rejected_recipient": 2}, counts
    assert counts.accepted == 995
    assert registry_sizes(real_conn)["failed"] == 5
    # The faults really happened, and the timeouts after accept were answered from the cache.
    assert statuses[500] > 0 and statuses[429] > 0 and counts.replays > 0, statuses
    assert worker_jobs > 0, "the VM worker took no part"
