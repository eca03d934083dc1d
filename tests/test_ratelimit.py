"""The global send-rate limit shared through Redis (docs/PLATFORM.md "Resend": the rate limit is per
team, shared by all keys; a 429 carries retry-after)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis
from pydantic import SecretStr

from emailqueue import RetryableSendError, Settings, drain, send_email
from emailqueue._payload import Payload
from emailqueue._ratelimit import MARGIN, RateLimiter, limiter_key
from emailqueue._send import LOCAL_RATE_LIMIT, send
from emailqueue.testing import FakeResend


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_slots_are_spaced_one_interval_apart(conn: redis.Redis) -> None:
    clock = Clock()
    limiter = RateLimiter(conn, "rl", 2.0, clock=clock)
    granted, wait = limiter.reserve(3, horizon=10)
    assert (granted, wait) == (3, 0.0)
    # The next free slot is three intervals away; with no horizon, nothing is granted.
    granted, wait = limiter.reserve(1, horizon=0)
    assert granted == 0
    assert wait == pytest.approx(3 * MARGIN / 2.0)
    clock.now += 10
    assert limiter.reserve(1)[0] == 1


def test_the_horizon_bounds_how_far_ahead_slots_are_taken(conn: redis.Redis) -> None:
    limiter = RateLimiter(conn, "rl", 2.0, clock=Clock())
    granted, _ = limiter.reserve(10, horizon=1.0)
    assert granted == 2  # slots at 0 and 0.525 s; the one at 1.05 s is past the horizon


def test_two_limiters_on_the_same_key_share_the_slots(conn: redis.Redis) -> None:
    clock = Clock()
    first = RateLimiter(conn, "rl", 2.0, clock=clock)
    second = RateLimiter(conn, "rl", 2.0, clock=clock)
    assert first.reserve(1) == (1, 0.0)
    granted, wait = second.reserve(1, horizon=5)
    assert granted == 1 and wait == pytest.approx(MARGIN / 2.0)


def test_slots_are_shared_across_processes(real_conn: redis.Redis, redis_url: str) -> None:
    code = (
        "import redis; from emailqueue._ratelimit import RateLimiter; "
        f"print(RateLimiter(redis.Redis.from_url({redis_url!r}), 'rl', 1.0).reserve(5, horizon=60)[0])"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert other.stdout.strip() == "5"
    granted, wait = RateLimiter(real_conn, "rl", 1.0).reserve(1, horizon=60)
    assert granted == 1 and wait > 4  # behind the other process's five slots


def test_a_pause_holds_back_every_sender(conn: redis.Redis) -> None:
    clock = Clock()
    RateLimiter(conn, "rl", 2.0, clock=clock).pause(30)
    granted, wait = RateLimiter(conn, "rl", 2.0, clock=clock).reserve(1, horizon=5)
    assert granted == 0 and wait == pytest.approx(30)


def test_unlimited_costs_no_command(conn: redis.Redis) -> None:
    limiter = RateLimiter(conn, "rl", 0)
    assert limiter.reserve(7) == (7, 0.0)
    limiter.pause(10)
    assert conn.dbsize() == 0


def test_a_429_pauses_all_senders_for_retry_after(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    limited = settings.model_copy(update={"resend_rate_limit": 50.0})
    fake_resend.fail_next(1, 429, "rate_limit_exceeded", retry_after=20)
    send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=limited)
    report = drain(connection=conn, settings=limited)
    assert report.retrying == 1
    # Another sender (a VM worker, another drain) gets no slot for the next 20 s.
    other = RateLimiter(conn, limiter_key("emails"), 50.0)
    granted, wait = other.reserve(1, horizon=5)
    assert granted == 0 and 15 < wait <= 20
    # And a VM worker's send with a short wait gives up without spending an attempt.
    payload = Payload.single({"to": ["b@example.com"], "subject": "s", "text": "t"}, "k")
    with pytest.raises(RetryableSendError) as info:
        send(payload, None, limiter=other, wait=1.0)  # type: ignore[arg-type]
    assert info.value.name == LOCAL_RATE_LIMIT


def test_drains_under_the_limit_get_no_429(conn: redis.Redis, settings: Settings) -> None:
    """Time is virtual: the drain's sleeps move the clock that both the limiter and the fake's
    rate-limit window read, so pacing is checked exactly and without waiting."""
    now = [1_000_000.0]

    def sleep(seconds: float) -> None:
        now[0] += max(seconds, 0.0)

    with FakeResend(rate_limit=20, clock=lambda: now[0]) as fake:
        limited = settings.model_copy(
            update={
                "resend_rate_limit": 20.0,
                "resend_api_url": fake.url,
                "resend_api_key": SecretStr(fake.api_key),
                "drain_concurrency": 1,  # one send at a time, so the virtual clock is exact
            }
        )
        for i in range(20):
            send_email(to=f"p{i}@example.com", subject="s", text="t", connection=conn, settings=limited)
        start = now[0]
        while (
            drain(connection=conn, settings=limited, wall_clock=lambda: now[0], sleep=sleep).stopped
            != "empty"
        ):
            pass
        assert len(fake.accepted) == 20
        assert [r.status for r in fake.requests if r.status == 429] == []
        assert now[0] - start >= 19 * MARGIN / 20.0  # paced, not a burst


def test_jobs_without_a_slot_in_the_budget_go_back_to_the_queue(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    paced = settings.model_copy(update={"resend_rate_limit": 1.0, "drain_concurrency": 4})
    ids = [
        send_email(to=f"p{i}@example.com", subject="s", text="t", connection=conn, settings=paced)
        for i in range(4)
    ]
    # budget 4.5 s - one send's worst case (3 s) leaves 1.5 s of slots: two, at 0 and 1.05 s.
    report = drain(connection=conn, settings=paced, time_budget=4.5, sleep=lambda s: None)
    assert (report.processed, report.sent, report.remaining, report.stopped) == (2, 2, 2, "time_budget")
    assert conn.zcard("rq:wip:emails") == 0
    queued = [i.decode() for i in conn.lrange("rq:queue:emails", 0, -1)]
    assert queued == ids[2:]  # back at the front, in order
    assert {conn.hget(f"rq:job:{i}", "status") for i in queued} == {b"queued"}


def test_packs_without_a_slot_in_the_budget_are_released_for_the_next_run(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """A pack that got no send slot keeps its ids and its key: the next run sends it as it was."""
    paced = settings.model_copy(update={"resend_rate_limit": 1.0, "drain_concurrency": 4, "email_pack": True})
    for i in range(250):
        send_email(to=f"p{i}@example.com", subject="s", text="t", connection=conn, settings=paced)
    # Three packs (100, 100, 50) claimed; 1.5 s of slots in the budget: two of them go now.
    report = drain(connection=conn, settings=paced, time_budget=4.5, sleep=lambda s: None)
    assert (report.packs, report.sent, report.stopped) == (2, 200, "time_budget")
    (released,) = conn.zrange("emailqueue:packs:emails", 0, -1, withscores=True)
    assert released[1] <= time.time()  # due at once
    key = (conn.hget(f"emailqueue:pack:emails:{released[0].decode()}", "key") or b"").decode()
    report = drain(connection=conn, settings=paced, sleep=lambda s: None)
    assert (report.packs, report.sent) == (1, 50)
    assert fake_resend.requests[-1].headers["idempotency-key"] == key
    assert len(fake_resend.accepted) == 250 and len({e.to[0] for e in fake_resend.accepted}) == 250
    assert conn.zcard("emailqueue:packs:emails") == 0 and conn.llen("rq:queue:emails") == 0
