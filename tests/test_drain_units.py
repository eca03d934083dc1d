"""One drain run's details an operator or a caller can see: its log lines, the threads its sends
run in, how many sends are in flight, the send slots it waits for, what it gives back when the
rate limit grants fewer slots than it claimed, and the keys its packs are sent under. Time is
injected (fixed clocks, a recording ``sleep``), so nothing waits. Runs on both tiers."""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import time
from typing import Any

import pytest
import redis

from emailqueue import Settings, drain
from emailqueue._constants import META_KEY
from emailqueue._pack import Packer, Prepared
from emailqueue._pack_scripts import PackRow
from emailqueue._ratelimit import MARGIN, RateLimiter, limiter_key
from emailqueue._resend import BatchResult
from emailqueue.testing import FakeResend
from tests.test_drain_rounds import Sleeps, queue

LATER = 10_000.0


def test_a_run_ends_with_one_log_line_holding_its_report(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="emailqueue.drain")
    queue(conn, settings, 2)
    report = drain(connection=conn, settings=settings)
    (summary,) = [r for r in caplog.records if r.name == "emailqueue.drain"]
    assert summary.levelno == logging.INFO
    assert summary.getMessage() == f"drain: {report.to_dict()}"


def test_the_drain_warns_when_it_requeues_what_a_dead_worker_left(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, caplog: pytest.LogCaptureFixture
) -> None:
    (parked,) = queue(conn, settings, 1)
    conn.lrem("rq:queue:emails", 0, parked)
    conn.rpush("rq:queue:emails:intermediate", parked)  # dequeued by a VM worker that died
    drain(connection=conn, settings=settings)  # sees the parked job for the first time
    caplog.set_level(logging.WARNING, logger="emailqueue.drain")
    drain(connection=conn, settings=settings, wall_clock=lambda: time.time() + LATER)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == ["requeued 1 job(s) a dead VM worker left in RQ's intermediate list"]


def test_sends_run_in_threads_named_emailqueue_send(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, caplog: pytest.LogCaptureFixture
) -> None:
    """A log format with ``%(threadName)s`` (or a thread dump) tells a drain's sends apart."""
    caplog.set_level(logging.INFO, logger="emailqueue")
    queue(conn, settings, 2)
    drain(connection=conn, settings=settings)
    sends = [r for r in caplog.records if r.getMessage().startswith("sent 1 email(s)")]
    assert len(sends) == 2
    assert all(re.fullmatch(r"emailqueue-send_\d+", r.threadName or "") for r in sends)


class Gathering:
    """A Resend client whose sends each wait until ``n`` of them are in flight at once."""

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n, timeout=5)  # only a drain that sends fewer waits

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str:
        self.barrier.wait()
        return f"re_{idempotency_key}"

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult:
        raise AssertionError("packing is off")


def test_drain_concurrency_sends_are_in_flight_at_once(conn: redis.Redis, settings: Settings) -> None:
    """33 is more than a thread pool's default size on any machine (at most 32)."""
    wide = settings.model_copy(update={"drain_concurrency": 33})
    queue(conn, wide, 33)
    report = drain(connection=conn, settings=wide, client=Gathering(33))
    assert (report.sent, report.retrying, report.requests) == (33, 0, 33)


class Exploding:
    """A Resend client that fails with something that is not a send error (a bug, a library's)."""

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str:
        raise RuntimeError("the socket library broke")

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult:
        raise RuntimeError("the socket library broke")


def test_an_unexpected_error_is_logged_with_the_exception_and_retried(
    conn: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="emailqueue.drain")
    (job_id,) = queue(conn, settings, 1)
    report = drain(connection=conn, settings=settings, client=Exploding())
    assert (report.retrying, report.failed) == (1, 0)
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"unexpected error sending job {job_id}: RuntimeError('the socket library broke')"]


def test_an_unreadable_jobs_reason_is_capped_at_300_characters_and_logged_whole(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="emailqueue.drain")
    (job_id,) = queue(conn, settings, 1)
    conn.hset(f"rq:job:{job_id}", mapping={"data": b"garbage", "created_at": "not a date " * 40})
    report = drain(connection=conn, settings=settings)
    assert (report.failed, report.retrying) == (1, 0)
    (said,) = [r.getMessage() for r in caplog.records]
    match = re.fullmatch(rf"job {job_id} is unreadable \((.*)\): failed", said, flags=re.DOTALL)
    assert match is not None
    detail = match.group(1)
    assert detail.startswith("ValueError(") and len(detail) > 300
    meta = json.loads(conn.hget(f"rq:job:{job_id}", "meta") or b"{}")
    assert meta[META_KEY]["error"]["name"] == "bad_payload"
    assert meta[META_KEY]["error"]["message"] == f"the job hash is unreadable: {detail}"[:300]


class WorkerProbe:
    """A Resend client that notes, as each single email leaves, which worker its job names."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.workers: list[bytes | None] = []

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str:
        job_id = idempotency_key.removeprefix("emailqueue-")
        self.workers.append(self.conn.hget(f"rq:job:{job_id}", "worker_name"))
        return f"re_{job_id}"

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult:
        raise AssertionError("packing is off")


def test_a_job_claimed_without_packing_names_the_drain_as_its_worker(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """``rq info`` and the started registry show who holds a job: here, the drain."""
    queue(conn, settings, 2)  # email_pack is off in these settings
    probe = WorkerProbe(conn)
    report = drain(connection=conn, settings=settings, client=probe)
    assert report.sent == 2
    assert probe.workers == [b"emailqueue-drain", b"emailqueue-drain"]


def test_a_send_taken_exactly_at_the_end_of_the_budget_still_fits(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Budget 6 s, a send takes 3 s at worst (1 + 2 s timeouts): with 3 s gone, a send started
    now ends exactly when the budget does, so it is taken."""
    queue(conn, settings, 1)
    reads = itertools.chain([0.0], itertools.repeat(3.0))  # the run starts at 0, then 3 s have gone
    report = drain(connection=conn, settings=settings, time_budget=6.0, clock=lambda: next(reads))
    assert (report.sent, report.stopped) == (1, "empty")


def test_a_pack_waits_for_a_slot_another_sender_holds_on_the_drains_wall_clock(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Another sender took the next slot of the shared limit at the drain's wall-clock time: the
    drain's pack waits one interval for its own, counted from the reservation."""
    paced = settings.model_copy(update={"resend_rate_limit": 2.0, "email_pack": True})
    now = float(int(time.time() + LATER))  # whole seconds: Lua keeps the slot to 14 digits
    held, _ = RateLimiter(conn, limiter_key("emails"), 2.0, clock=lambda: now).reserve(1)
    assert held == 1
    queue(conn, paced, 2)
    sleeps = Sleeps()
    report = drain(connection=conn, settings=paced, clock=lambda: 100.0, wall_clock=lambda: now, sleep=sleeps)
    assert (report.packs, report.sent) == (1, 2)
    assert sleeps.waits == [round(MARGIN / 2.0, 6)]


def test_the_time_spent_building_packs_is_taken_off_the_singles_wait(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack and a single in one round, slots one interval apart from the reservation. Building
    the pack's body takes 0.2 s; the single then waits one interval less those 0.2 s."""
    paced = settings.model_copy(update={"resend_rate_limit": 2.0, "email_pack": True, "drain_concurrency": 2})
    queue(conn, paced, 2, attached=1)
    now = [100.0]
    build = Packer.prepare

    def slow_build(packer: Packer, packs: list[PackRow]) -> list[Prepared]:
        ready = build(packer, packs)
        now[0] += 0.2
        return ready

    monkeypatch.setattr(Packer, "prepare", slow_build)
    sleeps = Sleeps()
    report = drain(connection=conn, settings=paced, clock=lambda: now[0], sleep=sleeps)
    assert (report.requests, report.packs, report.sent) == (2, 1, 3)
    assert sleeps.waits == [round(MARGIN / 2.0 - 0.2, 6)]  # the pack's slot was already due


def test_what_got_no_send_slot_goes_back_to_the_queue_unsent(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """A pack and a single claimed together, one slot granted in time (the next is 105 s away,
    past the budget): the pack is sent, the single goes back to the queue, claimed by nobody."""
    slow = settings.model_copy(update={"resend_rate_limit": 0.01, "email_pack": True, "drain_concurrency": 2})
    (*_, single) = queue(conn, slow, 2, attached=1)
    now = time.time()
    report = drain(
        connection=conn, settings=slow, time_budget=10.0, clock=lambda: 100.0, wall_clock=lambda: now
    )
    assert (report.requests, report.packs, report.sent) == (1, 1, 2)
    assert (report.remaining, report.stopped) == (1, "time_budget")
    assert len(fake_resend.accepted) == 2
    assert conn.lrange("rq:queue:emails", 0, -1) == [single.encode()]
    assert conn.zcard("rq:wip:emails") == 0
    assert conn.hget(f"rq:job:{single}", "status") == b"queued"


def test_each_run_sends_its_packs_under_keys_of_their_own(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Resend answers a reused Idempotency-Key from its cache (or refuses a different body): two
    runs' packs must never share one, or the second run's emails are not sent."""
    packing = settings.model_copy(update={"email_pack": True})
    queue(conn, packing, 2)
    first = drain(connection=conn, settings=packing)
    queue(conn, packing, 2)
    second = drain(connection=conn, settings=packing)
    assert (first.packs, first.sent, second.packs, second.sent) == (1, 2, 1, 2)
    keys = [r.headers["idempotency-key"] for r in fake_resend.requests]
    assert len(keys) == 2 and len(set(keys)) == 2
    assert len(fake_resend.accepted) == 4
