"""``emailqueue worker`` packs (issue 13): a VM worker sends queued single emails up to 100 per
``POST /emails/batch``, exactly once, through the drain's own code run in the worker process
(emailqueue._worker.EmailWorker). Real worker processes, the suite's real Redis, the fake Resend
over HTTP.

- a burst worker delivers a backlog of 300 in 3 requests;
- a long-running worker that meets a backlog behind the job it dequeued packs the backlog;
- a worker SIGKILLed while its pack is at Resend leaves the pack behind; a second worker (no
  drain) resends it, same body and key, and Resend answers from its idempotency cache;
- ``EMAIL_PACK=false``: one request per email, each under its own key.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from emailqueue import Settings, send_email
from emailqueue.testing import FakeResend

from .conftest import make_settings, people
from .faults import (
    age_redis,
    lapse_pack_leases,
    sigkill_tree,
    start_emailqueue_worker,
    start_rq_worker,
    stop_worker,
    wait_for,
    worker_env,
)
from .ledger import Ledger, stuck_count

pytestmark = pytest.mark.real_redis


def enqueue(conn: redis.Redis, settings: Settings, recipients: list[str]) -> list[str]:
    return [
        str(send_email(to=r, subject="Hi", text="x", connection=conn, settings=settings)) for r in recipients
    ]


def batch_sizes(fake: FakeResend) -> list[int]:
    return sorted(len(json.loads(r.body)) for r in fake.requests if r.path == "/emails/batch")


def packing_env(redis_url: str, fake: FakeResend, pack: bool = True) -> dict[str, str]:
    return worker_env(redis_url, fake.api_key, fake.url, EMAIL_PACK="true" if pack else "false")


def idle_worker(conn: redis.Redis) -> bool:
    """A registered worker is waiting for a job (its start-up round is over)."""
    return any(conn.hget(key, "state") == b"idle" for key in conn.smembers("rq:workers"))


@pytest.mark.slow
def test_a_burst_worker_packs_a_backlog_of_300_into_3_requests(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """300 queued single emails, ``emailqueue worker --burst``: the worker's start-up round packs
    them (100 a request, no rate limit here so 8 requests may be in flight), every email is
    accepted once, and the worker makes 3 requests instead of 300."""
    settings = make_settings(fake_resend, redis_url, email_pack=True)
    ledger = new_ledger("vm-worker/packs-a-backlog-of-300")
    recipients = people(300, "wpack")
    enqueue(real_conn, settings, recipients)
    ledger.expect(recipients)
    with open(tmp_path / "worker.log", "wb") as log:
        worker = start_emailqueue_worker(packing_env(redis_url, fake_resend), log, tmp_path, burst=True)
        rc = worker.wait(timeout=120)
    output = (tmp_path / "worker.log").read_text(errors="replace")
    counts = ledger.finish(worker_exit=rc, batches=batch_sizes(fake_resend))
    assert rc == 0, output[-3000:]
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert counts.accepted == 300 and counts.requests == 3, counts
    assert batch_sizes(fake_resend) == [100, 100, 100]
    assert "packing round (maintenance): 3 request(s), 300 sent in 3 pack(s)" in output


@pytest.mark.slow
def test_a_stock_rq_worker_packs_with_emailqueues_worker_class(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """The README's plain command with ``--worker-class emailqueue.EmailWorker`` packs too (no
    preloading there: the round reads the settings itself)."""
    settings = make_settings(fake_resend, redis_url, email_pack=True)
    ledger = new_ledger("vm-worker/stock-rq-worker-with-the-worker-class")
    recipients = people(150, "wstock")
    enqueue(real_conn, settings, recipients)
    ledger.expect(recipients)
    args = ["--job-class", "emailqueue.EmailJob", "--worker-class", "emailqueue.EmailWorker"]
    with open(tmp_path / "worker.log", "wb") as log:
        worker = start_rq_worker(
            redis_url, packing_env(redis_url, fake_resend), log, tmp_path, burst=True, extra=args
        )
        rc = worker.wait(timeout=120)
    output = (tmp_path / "worker.log").read_text(errors="replace")
    counts = ledger.finish(worker_exit=rc, batches=batch_sizes(fake_resend))
    assert rc == 0, output[-3000:]
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert batch_sizes(fake_resend) == [50, 100] and counts.requests == 2, counts


@pytest.mark.slow
def test_a_running_worker_packs_the_backlog_behind_the_job_it_dequeued(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """A long-running worker takes the first email and sends it alone, as RQ always does (held at
    Resend meanwhile); 299 more are queued behind it. Once the job is done, the worker sees the
    backlog (one LLEN) and packs it: 1 + 3 requests for 300 emails, each accepted once."""
    settings = make_settings(fake_resend, redis_url, email_pack=True)
    ledger = new_ledger("vm-worker/packs-the-backlog-behind-a-job")
    recipients = people(300, "wback")
    gate = fake_resend.hold()  # the next request: the worker's start-up round finds nothing to send
    with open(tmp_path / "worker.log", "wb") as log:
        worker = start_emailqueue_worker(packing_env(redis_url, fake_resend), log, tmp_path)
        try:
            wait_for(lambda: idle_worker(real_conn), 30, "the worker to wait for jobs")
            (first,) = enqueue(real_conn, settings, recipients[:1])
            assert gate.arrived.wait(20), "the worker never sent the first email"
            enqueue(real_conn, settings, recipients[1:])
            ledger.expect(recipients)
            gate.release()
            wait_for(lambda: len(fake_resend.accepted) == 300, 60, "the backlog to go out")
            wait_for(lambda: stuck_count(real_conn) == 0, 20, "the worker to finish")
        finally:
            gate.release()
            rc = stop_worker(worker)
    output = (tmp_path / "worker.log").read_text(errors="replace")
    counts = ledger.finish(worker_exit=rc, batches=batch_sizes(fake_resend))
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    singles = [r.headers["idempotency-key"] for r in fake_resend.requests if r.path == "/emails"]
    assert singles == [f"emailqueue-{first}"]  # the dequeued job itself is never in a pack
    assert batch_sizes(fake_resend) == [99, 100, 100] and counts.requests == 4, counts
    assert "packing round (backlog): 3 request(s), 299 sent in 3 pack(s)" in output, output[-3000:]


@pytest.mark.slow
def test_a_second_worker_resends_the_pack_of_a_worker_killed_mid_request_once(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """VM workers only, no drain: the machine of a packing worker dies (SIGKILL of the worker and
    its children) while its pack of 50 is at Resend, which accepts it afterwards. Once the pack's
    claim lease has run out, a second worker resends the stored body under the pack's key; Resend
    answers from its idempotency cache: 50 accepted once, none failed, nothing left behind."""
    settings = make_settings(fake_resend, redis_url, email_pack=True)
    ledger = new_ledger("vm-worker/killed-mid-pack-then-a-second-worker")
    recipients = people(50, "wkill")
    enqueue(real_conn, settings, recipients)
    ledger.expect(recipients)
    env = packing_env(redis_url, fake_resend)
    gate = fake_resend.hold()
    with open(tmp_path / "worker-1.log", "wb") as log:
        worker = start_emailqueue_worker(env, log, tmp_path, burst=True)
        try:
            assert gate.arrived.wait(30), "the worker's pack never reached Resend"
            sigkill_tree(worker)
        finally:
            gate.release()
    wait_for(lambda: len(fake_resend.accepted) == 50, 20, "Resend to accept the dead worker's pack")
    assert real_conn.zcard("emailqueue:packs:emails") == 1  # the pack is left behind, unsettled
    age_redis(real_conn)  # the dead worker's keys and scheduler lock, as they would be later
    assert lapse_pack_leases(real_conn) == 1
    with open(tmp_path / "worker-2.log", "wb") as log:
        second = start_emailqueue_worker(env, log, tmp_path, burst=True)
        rc = second.wait(timeout=120)
    output = (tmp_path / "worker-2.log").read_text(errors="replace")
    counts = ledger.finish(worker_exit=rc, http=[r.status for r in fake_resend.requests])
    assert rc == 0, output[-3000:]
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert counts.accepted == 50 and counts.replays == 1 and counts.duplicated_keys == 0, counts
    bodies = {r.body for r in fake_resend.requests}
    keys = {r.headers["idempotency-key"] for r in fake_resend.requests}
    assert len(fake_resend.requests) == 2 and len(bodies) == 1 and len(keys) == 1  # identical resend
    assert not real_conn.keys("emailqueue:pack*") and not real_conn.keys("rq:job:*")


@pytest.mark.slow
def test_with_email_pack_false_the_worker_sends_one_request_per_email(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    settings = make_settings(fake_resend, redis_url, email_pack=False)
    ledger = new_ledger("vm-worker/email-pack-false")
    recipients = people(5, "wsingle")
    ids = enqueue(real_conn, settings, recipients)
    ledger.expect(recipients)
    with open(tmp_path / "worker.log", "wb") as log:
        env = packing_env(redis_url, fake_resend, pack=False)
        worker = start_emailqueue_worker(env, log, tmp_path, burst=True)
        rc = worker.wait(timeout=120)
    counts = ledger.finish(worker_exit=rc)
    assert rc == 0
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert [r.path for r in fake_resend.requests] == ["/emails"] * 5
    assert sorted(r.headers["idempotency-key"] for r in fake_resend.requests) == sorted(
        f"emailqueue-{i}" for i in ids
    )


@pytest.mark.slow
def test_a_sigterm_during_a_round_stops_the_worker_after_it_with_nothing_lost(
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """A deploy stops the worker (SIGTERM) while its round's pack is at Resend: the round ends as
    usual (the pack is acked) and the worker exits at once, cleanly, instead of breaking off the
    round or waiting for another job first."""
    settings = make_settings(fake_resend, redis_url, email_pack=True)
    ledger = new_ledger("vm-worker/sigterm-during-a-round")
    recipients = people(40, "wterm")
    first_gate = fake_resend.hold()
    with open(tmp_path / "worker.log", "wb") as log:
        worker = start_emailqueue_worker(packing_env(redis_url, fake_resend), log, tmp_path)
        try:
            wait_for(lambda: idle_worker(real_conn), 30, "the worker to wait for jobs")
            enqueue(real_conn, settings, recipients[:1])
            assert first_gate.arrived.wait(20), "the worker never sent the first email"
            enqueue(real_conn, settings, recipients[1:])
            ledger.expect(recipients)
            pack_gate = fake_resend.hold()
            first_gate.release()
            assert pack_gate.arrived.wait(20), "the worker's round never sent its pack"
            worker.send_signal(signal.SIGTERM)
            pack_gate.release()
            rc = worker.wait(timeout=30)
        finally:
            first_gate.release()
            stop_worker(worker)
    output = (tmp_path / "worker.log").read_text(errors="replace")
    counts = ledger.finish(worker_exit=rc)
    assert rc == 0, output[-3000:]
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert counts.accepted == 40 and batch_sizes(fake_resend) == [39]
