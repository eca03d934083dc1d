"""Immediate sends: send_email(now=True), send_event_email(now=True), deliver_now and the async
variants. Each runs on both tiers (fakeredis with Lua, and the suite's real server); the costs
are counted on the real server. Process kills are in tests/reliability/test_now_kill.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue import (
    ConfigurationError,
    InvalidEmailError,
    Settings,
    adeliver_now,
    asend_email,
    deliver_now,
    drain,
    send_email,
    send_event_email,
)
from emailqueue._constants import META_KEY
from emailqueue._now import send_queued_now
from emailqueue._now_scripts import WRITE_AND_CLAIM
from emailqueue._ratelimit import RateLimiter, limiter_key
from emailqueue.testing import FakeResend
from tests.helpers.redis_stats import CommandCounter, counting_redis

LATER = 10_000.0


def later_clock() -> float:
    return time.time() + LATER


def job_keys(conn: redis.Redis) -> list[bytes]:
    return sorted(k for k in conn.keys("rq:*") if k != b"rq:queues")


def state(conn: redis.Redis) -> dict[str, int]:
    return {
        "queued": conn.llen("rq:queue:emails"),
        "started": conn.zcard("rq:wip:emails"),
        "scheduled": conn.zcard("rq:scheduled:emails"),
        "failed": conn.zcard("rq:failed:emails"),
    }


def test_send_now_is_accepted_before_the_call_returns_and_leaves_nothing_behind(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = send_email(
        to="ada@example.com",
        subject="Your sign-in link",
        text="x",
        connection=conn,
        settings=settings,
        now=True,
    )
    assert [e.to for e in fake_resend.accepted] == [["ada@example.com"]]
    assert fake_resend.accepted[0].idempotency_key == f"emailqueue-{job_id}"  # the queued job's key
    assert job_keys(conn) == []  # acked: claim dropped, job deleted (result_ttl=0)
    assert drain(connection=conn, settings=settings).processed == 0


def test_deliver_now_sends_a_queued_job_once_and_a_second_call_finds_nothing(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = send_email(to="ada@example.com", subject="Reset", text="x", connection=conn, settings=settings)
    assert fake_resend.accepted == []
    outcome = deliver_now(job_id, connection=conn, settings=settings)
    assert (outcome.sent, outcome.status, outcome.job_id) == (True, "sent", job_id)
    again = deliver_now(job_id, connection=conn, settings=settings)
    assert (again.sent, again.status) == (False, "not_queued")
    assert len(fake_resend.accepted) == 1 and job_keys(conn) == []
    assert deliver_now("em_unknown", connection=conn, settings=settings).status == "not_queued"


def test_deliver_now_leaves_a_job_a_drain_already_claimed(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    job_id = send_email(to="ada@example.com", subject="Reset", text="x", connection=conn, settings=settings)
    with fake_resend.hold() as gate:  # the drain's request is at Resend, not yet accepted
        outcomes: list[Any] = []
        import threading

        t = threading.Thread(target=lambda: outcomes.append(drain(connection=conn, settings=settings)))
        t.start()
        assert gate.arrived.wait(10)
        assert deliver_now(job_id, connection=conn, settings=settings).status == "not_queued"
    t.join(10)
    assert outcomes[0].sent == 1 and len(fake_resend.accepted) == 1


def test_no_free_send_slot_in_time_leaves_the_email_queued_for_the_drain(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Fact (docs/SEND_NOW.md, rate limit): an immediate send takes a slot of the limit shared
    with every drain and worker only if one is free within EMAIL_NOW_MAX_WAIT_S."""
    limited = settings.model_copy(update={"resend_rate_limit": 2.0, "email_now_max_wait_s": 0.5})
    RateLimiter(conn, limiter_key("emails"), 2.0).pause(30)  # another sender got a 429
    job_id = send_email(
        to="ada@example.com", subject="Hi", text="x", connection=conn, settings=limited, now=True
    )
    assert fake_resend.requests == []
    assert state(conn) == {"queued": 1, "started": 0, "scheduled": 0, "failed": 0}
    assert conn.hget(f"rq:job:{job_id}", "status") == b"queued"
    report = drain(connection=conn, settings=settings)
    assert report.sent == 1 and fake_resend.accepted[0].idempotency_key == f"emailqueue-{job_id}"


def test_a_slot_free_within_the_wait_is_taken_and_waited_for(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    limited = settings.model_copy(update={"resend_rate_limit": 2.0, "email_now_max_wait_s": 10.0})
    t0 = time.time()
    limiter = RateLimiter(conn, limiter_key("emails"), 2.0, clock=lambda: t0)
    job_id = send_email(to="ada@example.com", subject="Hi", text="x", connection=conn, settings=settings)
    limiter.pause(5.0)  # the next free slot is 5 s ahead, within the 10 s wait
    waits: list[float] = []
    outcome = deliver_now(job_id, connection=conn, settings=limited, clock=lambda: t0, sleep=waits.append)
    assert outcome.sent
    assert waits == [pytest.approx(5.0, abs=1e-3)]  # Lua keeps 14 significant digits of Unix time
    # The slot is taken in the shared limiter: the next sender waits one interval (1.05/2 s) more.
    granted, wait = limiter.reserve(1, horizon=10)
    assert granted == 1 and wait == pytest.approx(5.0 + 0.525, abs=1e-3)


def test_a_transient_resend_error_schedules_the_usual_retry_and_raises_nothing(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.fail_next(1, 500, "internal_server_error")
    job_id = send_email(
        to="ada@example.com", subject="Hi", text="x", connection=conn, settings=settings, now=True
    )
    assert fake_resend.accepted == []
    assert state(conn) == {"queued": 0, "started": 0, "scheduled": 1, "failed": 0}
    record = Job.fetch(job_id, connection=conn, serializer=JSONSerializer).meta[META_KEY]
    assert record["error"]["name"] == "internal_server_error" and record["attempts"] == 1
    report = drain(connection=conn, settings=settings, wall_clock=later_clock)
    assert report.sent == 1 and [e.idempotency_key for e in fake_resend.accepted] == [f"emailqueue-{job_id}"]


def test_a_permanent_rejection_fails_the_job_with_its_reason(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    fake_resend.fail_next(1, 422, "validation_error", "bad")
    job_id = deliver_now(
        send_email(to="ada@example.com", subject="Hi", text="x", connection=conn, settings=settings),
        connection=conn,
        settings=settings,
    )
    assert (job_id.status, job_id.sent) == ("failed", False) and "validation_error" in job_id.detail
    assert state(conn)["failed"] == 1 and state(conn)["started"] == 0


def test_a_timeout_after_resend_accepted_is_retried_with_the_same_key_and_sent_once(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Fact (docs/SEND_NOW.md, Resend idempotency): the same key and body within 24 h is answered
    from Resend's cache, so the retry after a lost reply sends nothing again."""
    quick = settings.model_copy(update={"email_now_timeout_s": 0.2})
    fake_resend.timeout_after_accept(1, 1.0)
    job_id = send_email(
        to="ada@example.com", subject="Hi", text="x", connection=conn, settings=quick, now=True
    )
    assert len(fake_resend.accepted) == 1 and state(conn)["scheduled"] == 1
    deadline = time.monotonic() + 10
    while not fake_resend.requests and time.monotonic() < deadline:  # Resend's late reply goes out
        time.sleep(0.01)
    drain(connection=conn, settings=settings, wall_clock=later_clock)
    assert len(fake_resend.accepted) == 1 and fake_resend.replays == 1
    assert fake_resend.accepted_count_by_key() == {f"emailqueue-{job_id}": 1}
    assert job_keys(conn) == []


def test_an_idempotency_key_is_sent_once_however_often_it_is_sent_now(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    ids = {
        send_email(
            to="ada@example.com",
            subject="Receipt",
            text="x",
            idempotency_key="order-1",
            connection=conn,
            settings=settings,
            now=True,
        )
        for _ in range(3)
    }
    assert len(ids) == 1 and len(fake_resend.accepted) == 1 and job_keys(conn) == []


def test_event_email_now_sends_one_batch_at_once(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    guests = [f"g{i}@example.com" for i in range(5)]
    ids = send_event_email("party", guests, "Tonight", text="x", connection=conn, settings=settings, now=True)
    assert len(ids) == 1 and len(fake_resend.requests) == 1
    assert sorted(e.to[0] for e in fake_resend.accepted) == sorted(guests)
    assert job_keys(conn) == []


def test_event_email_now_without_batching_stops_at_the_first_job_with_no_slot(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """One request per recipient at 2/s: the immediate attempts end where no slot is free in
    time (here after 2: the limit's next slot is more than 0.3 s ahead); the queue sends the rest."""
    slow = settings.model_copy(
        update={"email_batch": False, "resend_rate_limit": 2.0, "email_now_max_wait_s": 0.3}
    )
    from emailqueue._enqueue import resolve_queue

    guests = [f"g{i}@example.com" for i in range(5)]
    ids = send_event_email("party", guests, "Tonight", text="x", connection=conn, settings=slow)
    waits: list[float] = []
    from emailqueue._now import deliver_ids_now

    outcomes = deliver_ids_now(resolve_queue(slow, conn), ids, slow, sleep=waits.append)
    assert [o.status for o in outcomes] == ["sent", "queued"]
    assert len(fake_resend.accepted) == 1 and state(conn)["queued"] == 4
    assert drain(connection=conn, settings=settings).sent == 4
    assert send_queued_now  # the function send_event_email(now=True) calls


def test_event_email_now_refuses_more_than_100_recipients_and_writes_nothing(
    conn: redis.Redis, settings: Settings
) -> None:
    guests = [f"g{i}@example.com" for i in range(101)]
    with pytest.raises(InvalidEmailError) as caught:
        send_event_email("big", guests, "Hi", text="x", connection=conn, settings=settings, now=True)
    assert caught.value.fields == ["recipients"] and "at most 100" in str(caught.value)
    assert conn.keys("*") == []


def test_now_without_a_resend_key_refuses_before_writing_anything(
    conn: redis.Redis, settings: Settings
) -> None:
    keyless = settings.model_copy(update={"resend_api_key": None})
    with pytest.raises(ConfigurationError, match="RESEND_API_KEY"):
        send_email(to="ada@example.com", subject="Hi", text="x", connection=conn, settings=keyless, now=True)
    with pytest.raises(ConfigurationError, match="RESEND_API_KEY"):
        send_event_email("e", ["a@example.com"], "Hi", text="x", connection=conn, settings=keyless, now=True)
    assert conn.keys("*") == []


def test_a_bad_message_with_now_raises_and_writes_nothing(conn: redis.Redis, settings: Settings) -> None:
    with pytest.raises(InvalidEmailError):
        send_email(to="nope", subject="Hi", text="x", connection=conn, settings=settings, now=True)
    assert conn.keys("*") == []


def test_a_retried_write_and_claim_whose_reply_was_lost_keeps_its_claim_or_its_place(
    conn: redis.Redis,
) -> None:
    """redis-py resends a script whose reply was lost: the second run must neither claim a job
    the first run queued, nor drop the claim the first run made."""
    script = conn.register_script(WRITE_AND_CLAIM)
    keys = [
        "rq:queue:emails",
        "rq:queues",
        "rq:wip:emails",
        "emailqueue:ratelimit:emails",
        "emailqueue:suppressed",
    ]

    def run(job_id: str, horizon: float) -> list[Any]:
        now = 1000.0
        args = [now, 0.525, horizon, now + 100, f"{job_id}:now-x", "ts", "emailqueue-now"]
        args += [f"rq:job:{job_id}", job_id, 0, "status", "started", "data", "d"]  # 0: no suppression check
        return [int(v) if i == 0 else v for i, v in enumerate(script(keys=keys, args=args))]

    assert run("claimed", 5)[0] == 1
    assert run("claimed", 5)[0] == 1  # the retry: still this call's claim
    assert conn.zcard("rq:wip:emails") == 1 and conn.hget("rq:job:claimed", "status") == b"started"

    conn.set("emailqueue:ratelimit:emails", 10_000.0)  # no slot for a long time
    assert run("queued", 0.5)[0] == 0
    assert run("queued", 0.5)[0] == 2  # the retry: it stays queued, once, and unclaimed
    assert conn.lrange("rq:queue:emails", 0, -1) == [b"queued"]
    assert conn.hget("rq:job:queued", "status") == b"queued" and conn.zcard("rq:wip:emails") == 1


def test_async_variants(conn: redis.Redis, settings: Settings, fake_resend: FakeResend) -> None:
    async def main() -> tuple[str, Any]:
        first = await asend_email(
            to="ada@example.com", subject="Hi", text="x", connection=conn, settings=settings, now=True
        )
        queued = send_email(to="bob@example.com", subject="Hi", text="x", connection=conn, settings=settings)
        return first, await adeliver_now(queued, connection=conn, settings=settings)

    first, outcome = asyncio.run(main())
    assert first.startswith("em_") and outcome.sent
    assert sorted(e.to[0] for e in fake_resend.accepted) == ["ada@example.com", "bob@example.com"]


@pytest.mark.real_redis
@pytest.mark.parametrize("rate_limit", [0.0, 2.0])
def test_an_immediate_email_costs_at_most_6_commands_plus_its_sent_record_in_2_round_trips(
    real_conn: redis.Redis, redis_url: str, settings: Settings, fake_resend: FakeResend, rate_limit: float
) -> None:
    """Counted on the server (INFO commandstats): enqueue + claim + a rate-limit slot in one
    script, the ack in one pipeline. The limiter is idle, as for most sign-in emails. The ack's
    pipeline also records the Resend id in the hour's sent index (issue 14): HSET, HINCRBY and
    EXPIRE, three commands and no round trip of their own; and the write checks the suppression
    mirror with one HMGET inside its script."""
    limited = settings.model_copy(update={"resend_rate_limit": rate_limit})
    conn, trips = counting_redis(redis_url, protocol=2, driver_info=None)
    send_email(to="w@example.com", subject="Hi", text="x", connection=conn, settings=limited, now=True)
    real_conn.delete(limiter_key("emails"))  # idle limiter (the warm-up call took a slot)
    trips.reset()
    with CommandCounter(real_conn) as counted:
        send_email(to="a@example.com", subject="Hi", text="x", connection=conn, settings=limited, now=True)
    print(f"\nsend now at rate {rate_limit}: {counted.total} {counted.by_command}, {trips.round_trips} trips")
    assert len(fake_resend.accepted) == 2
    assert trips.round_trips == 2
    record = {"hset": 1, "hincrby": 1, "expire": 1, "hmget": 1}
    assert counted.total - sum(record.values()) <= 6, counted.by_command
    assert all(counted.by_command.get(name, 0) >= n for name, n in record.items()), counted.by_command
    assert state(real_conn)["started"] == 0


@pytest.mark.real_redis
def test_immediate_sends_and_a_drain_share_one_rate_limit_without_a_429(
    real_conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Fact (docs/SEND_NOW.md, rate limit): Resend's limit is per team; a drain and immediate
    sends running at once take turns through the one shared limiter, so Resend (here the fake,
    enforcing the limit) never answers 429.

    Real threads on a shared machine send a little after their slot, so the fake allows 3
    requests in any second while the limiter paces at 2/s: a jitter of up to one slot passes, but
    a limiter that is not shared (2 drain sends and 2 immediate ones at once: 4 in one second)
    still draws a 429."""
    import threading

    fake_resend.rate_limit = 3.0
    paced = settings.model_copy(update={"resend_rate_limit": 2.0, "email_now_max_wait_s": 5.0})
    for i in range(2):
        send_email(to=f"q{i}@example.com", subject="Hi", text="x", connection=real_conn, settings=paced)
    reports: list[Any] = []
    drainer = threading.Thread(target=lambda: reports.append(drain(connection=real_conn, settings=paced)))
    drainer.start()
    ids = [
        send_email(
            to=f"n{i}@example.com", subject="Hi", text="x", connection=real_conn, settings=paced, now=True
        )
        for i in range(2)
    ]
    drainer.join(30)
    report = drain(connection=real_conn, settings=paced)  # whatever an immediate send left queued
    assert [r.status for r in fake_resend.requests if r.status == 429] == []
    assert sorted(e.to[0] for e in fake_resend.accepted) == [
        "n0@example.com",
        "n1@example.com",
        "q0@example.com",
        "q1@example.com",
    ]
    assert len(ids) == 2 and reports[0].processed + report.processed == 2  # the two queued ones


def test_a_drain_leaves_a_live_immediate_claim_alone_until_its_deadline(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """The claim counts as abandoned only once it is older than the attempt can last (the kill
    tests show an abandoned one taken back):
    EMAIL_NOW_MAX_WAIT_S + connect + read timeout + the drain's 30 s grace."""
    import threading

    lasts = (
        settings.email_now_max_wait_s + settings.resend_connect_timeout_s + settings.email_now_timeout_s + 30
    )
    with fake_resend.hold() as gate:
        caller = threading.Thread(
            target=send_email,
            kwargs={
                "to": "ada@example.com",
                "subject": "Hi",
                "text": "x",
                "connection": conn,
                "settings": settings,
                "now": True,
            },
        )
        caller.start()
        assert gate.arrived.wait(10)
        started = time.time()
        early = drain(connection=conn, settings=settings, wall_clock=lambda: started + lasts - 1)
        assert (early.recovered, early.processed) == (0, 0)
        score = conn.zrange("rq:wip:emails", 0, -1, withscores=True)[0][1]
        assert started < score <= started + lasts
    caller.join(10)
    assert len(fake_resend.accepted) == 1 and job_keys(conn) == []
