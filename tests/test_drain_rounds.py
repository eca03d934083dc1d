"""One drain run, round by round: how many requests it takes, when each send starts, what it
reports and what it leaves in Redis for the next run. Time is injected (a fixed monotonic clock,
a recording ``sleep``), so the pacing is checked exactly and nothing waits. Runs on both tiers
(fakeredis and the suite's real server)."""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any

import pytest
import redis

from emailqueue import DrainReport, Settings, drain, send_email
from emailqueue._ratelimit import MARGIN, RateLimiter, limiter_key
from emailqueue._resend import BatchResult, ResendClient, build_http_client
from emailqueue._store import JobStore
from emailqueue.testing import FakeResend

LATER = 10_000.0


class Sleeps:
    """A ``sleep`` that only records how long each send was asked to wait (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        with self.lock:
            self.waits.append(round(seconds, 6))


def queue(conn: redis.Redis, settings: Settings, n: int, *, attached: int = 0) -> list[str]:
    """``n`` plain emails (packable), then ``attached`` with an attachment (never packed)."""
    ids = [
        send_email(to=f"u{i}@example.com", subject="Hi", text="x", connection=conn, settings=settings)
        for i in range(n)
    ]
    pdf = {"filename": "a.pdf", "content": base64.b64encode(b"%PDF").decode()}
    ids += [
        send_email(
            to=f"a{i}@example.com",
            subject="Hi",
            text="x",
            attachments=[pdf],
            connection=conn,
            settings=settings,
        )
        for i in range(attached)
    ]
    return ids


def test_a_round_paces_its_packs_and_singles_from_one_reservation(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Three packs and a single in one round: four slots reserved at once, the packs first. The
    first starts at once, each next one interval later, measured from the reservation."""
    paced = settings.model_copy(update={"resend_rate_limit": 2.0, "drain_concurrency": 4, "email_pack": True})
    queue(conn, paced, 250, attached=1)
    sleeps = Sleeps()
    report = drain(connection=conn, settings=paced, clock=lambda: 100.0, sleep=sleeps)
    interval = MARGIN / 2.0
    assert sorted(sleeps.waits) == [round(interval * i, 6) for i in (1, 2, 3)]
    assert (report.requests, report.packs, report.sent, report.processed) == (4, 3, 251, 251)
    assert (report.largest_pack, report.stopped) == (100, "empty")
    assert len(fake_resend.accepted) == 251


def test_singles_are_paced_one_interval_apart(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    paced = settings.model_copy(update={"resend_rate_limit": 2.0, "drain_concurrency": 3})
    queue(conn, paced, 3)
    sleeps = Sleeps()
    report = drain(connection=conn, settings=paced, clock=lambda: 100.0, sleep=sleeps)
    assert sorted(sleeps.waits) == [round(MARGIN / 2.0 * i, 6) for i in (1, 2)]
    assert (report.requests, report.sent) == (3, 3)


def test_max_jobs_bounds_the_requests_across_rounds(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    wide = settings.model_copy(update={"drain_concurrency": 4})
    queue(conn, wide, 10)
    report = drain(connection=conn, settings=wide, max_jobs=5)
    assert (report.requests, report.sent, report.remaining, report.stopped) == (5, 5, 5, "max_jobs")


def test_a_due_pack_takes_its_place_among_the_requests_max_jobs_allows(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """A dead drain's pack is due: with ``max_jobs=1`` it is the one request; nothing new is
    claimed beside it."""
    packing = settings.model_copy(update={"email_pack": True})
    store = JobStore(conn, "emails", packing)
    queue(conn, packing, 3)
    _, (pack,) = store.pack_claim(
        units=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30, lease=90, size=100
    )
    queue(conn, packing, 4)
    report = drain(connection=conn, settings=packing, max_jobs=1, wall_clock=lambda: time.time() + LATER)
    assert (report.requests, report.packs, report.sent, report.remaining) == (1, 1, 3, 4)
    assert fake_resend.requests[-1].headers["idempotency-key"] == pack.key


def test_every_email_sent_in_a_round_keeps_its_resend_id(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    wide = settings.model_copy(update={"drain_concurrency": 3})
    ids = queue(conn, wide, 3)
    drain(connection=conn, settings=wide)
    store = JobStore(conn, "emails", wide)
    by_key = {e.idempotency_key: e.id for e in fake_resend.accepted}
    assert [store.resend_id(i) for i in ids] == [by_key[f"emailqueue-{i}"] for i in ids]


def test_on_progress_sees_the_report_after_every_request(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    packing = settings.model_copy(update={"email_pack": True, "drain_concurrency": 2})
    queue(conn, packing, 101, attached=1)
    seen: list[tuple[int, int]] = []

    def progress(report: DrainReport) -> None:
        seen.append((report.requests, report.processed))

    final = drain(connection=conn, settings=packing, on_progress=progress)
    # A pack of 100, the 101st alone (a pack of one is no pack), then the one with an attachment.
    assert seen == [(1, 100), (2, 101), (3, 102)]
    assert (final.requests, final.processed) == (3, 102)


class Probe:
    """A Resend client that looks at Redis as each request leaves: what a drain that died now
    would leave behind."""

    def __init__(self, inner: ResendClient, conn: redis.Redis) -> None:
        self.inner, self.conn = inner, conn
        self.seen: list[dict[str, Any]] = []

    def _look(self) -> None:
        self.seen.append(
            {
                "packs": self.conn.zrange("emailqueue:packs:emails", 0, -1, withscores=True),
                "wip": self.conn.zrange("rq:wip:emails", 0, -1, withscores=True),
                "workers": {
                    self.conn.hget(k, "worker_name")
                    for k in self.conn.keys("rq:job:*")
                    if self.conn.hget(k, "status") == b"started"
                },
            }
        )

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str:
        self._look()
        return self.inner.send(email, idempotency_key=idempotency_key)

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult:
        self._look()
        return self.inner.send_batch(emails, idempotency_key=idempotency_key)


def test_an_in_flight_claim_lasts_the_job_timeout_plus_the_grace_and_names_the_drain(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """A pack or a claimed job counts as abandoned only after the job's timeout plus the grace:
    no other drain takes it back while its request may still be in flight."""
    packing = settings.model_copy(update={"email_pack": True, "drain_concurrency": 1})
    queue(conn, packing, 2, attached=1)
    client = ResendClient(build_http_client(), api_key=fake_resend.api_key, base_url=fake_resend.url)
    probe = Probe(client, conn)
    now = 1_000_000.0
    drain(connection=conn, settings=packing, client=probe, wall_clock=lambda: now)
    client.close()
    lasts = packing.email_job_timeout_s + 30  # ABANDON_GRACE_S
    pack_seen, single_seen = probe.seen
    assert [score for _, score in pack_seen["packs"]] == [now + lasts]
    assert [score for _, score in single_seen["wip"]] == [now + lasts]
    assert single_seen["workers"] == {b"emailqueue-drain"}


def test_recovered_counts_abandoned_jobs_and_jobs_a_dead_worker_left_behind(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    store = JobStore(conn, "emails", settings)
    abandoned, parked = queue(conn, settings, 2)
    conn.lrem("rq:queue:emails", 0, parked)
    conn.rpush("rq:queue:emails:intermediate", parked)  # dequeued by a VM worker that died
    store.claim(n=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30)
    drain(connection=conn, settings=settings)  # sees the parked job for the first time
    report = drain(connection=conn, settings=settings, wall_clock=lambda: time.time() + LATER)
    assert (report.recovered, report.sent) == (2, 2)
    assert sorted(e.idempotency_key for e in fake_resend.accepted) == sorted(
        f"emailqueue-{i}" for i in (abandoned, parked)
    )


def test_a_run_with_several_packs_reports_their_sum(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    packing = settings.model_copy(update={"email_pack": True, "drain_concurrency": 2})
    queue(conn, packing, 150)
    fake_resend.reject_recipients = {"u1@example.com", "u120@example.com"}  # one in each pack
    report = drain(connection=conn, settings=packing)
    assert (report.packs, report.sent, report.failed, report.retrying) == (2, 148, 2, 0)
    fake_resend.reject_recipients = set()
    queue(conn, packing, 150)
    fake_resend.fail_next(2, 500, "internal_server_error")
    report = drain(connection=conn, settings=packing)
    assert (report.packs, report.sent, report.failed, report.retrying) == (0, 0, 0, 150)


def test_a_drain_stamps_failures_with_its_own_wall_clock(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Redis deadlines come from the clock the drain is given: a failed job is kept its failure
    TTL from the drain's now."""
    fake_resend.fail_next(1, 422, "validation_error", "bad")
    (job_id,) = queue(conn, settings, 1)
    now = time.time() + LATER
    drain(connection=conn, settings=settings, wall_clock=lambda: now)
    assert conn.zscore("rq:failed:emails", job_id) == pytest.approx(now + settings.email_failure_ttl_s)


def test_a_429_on_a_pack_holds_back_every_sender(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    packing = settings.model_copy(update={"email_pack": True, "resend_rate_limit": 50.0})
    queue(conn, packing, 3)
    fake_resend.fail_next(1, 429, "rate_limit_exceeded", retry_after=20)
    assert drain(connection=conn, settings=packing).retrying == 3
    granted, wait = RateLimiter(conn, limiter_key("emails"), 50.0).reserve(1, horizon=5)
    assert granted == 0 and 15 < wait <= 20


def test_the_drain_says_why_it_did_not_send_or_failed_a_job(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="emailqueue.drain")
    accepted, unreadable = queue(conn, settings, 2)
    conn.hset(f"rq:job:{accepted}", "emailqueue_accepted", '{"sent": 1}')
    conn.hset(f"rq:job:{unreadable}", mapping={"data": b"garbage", "created_at": "not a date"})
    drain(connection=conn, settings=settings)
    said = [r.getMessage() for r in caplog.records]
    assert f"job {accepted}: Resend already accepted it; not sent again" in said
    assert any(m.startswith(f"job {unreadable} is unreadable (") and m.endswith("): failed") for m in said)
