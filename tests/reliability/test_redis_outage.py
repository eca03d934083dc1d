"""b. The Redis server goes away and comes back (AOF on, fsync always) in the middle of a drain
and in the middle of ``send_event_email`` (and of a keyed ``send_email``): a clear ``QueueError``
within a few seconds, nothing half-written, nothing lost, nothing sent twice.

Each test runs its own server (``EmbeddedRedis``), so it can be stopped, crashed and restarted
on the same port and data directory. The enqueue tests reach it through a TCP proxy
(faults.RedisProxy) that can hold the enqueue script's request or its reply, so the server can
die at an exact moment: before the write, or after the write with the reply lost.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue import QueueError, drain, send_email, send_event_email
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend

from .conftest import make_settings, people, recover
from .faults import RedisProxy, redis_proxy, wait_for
from .ledger import Ledger, registry_sizes

pytestmark = pytest.mark.real_redis

#: "Returns within a few seconds": the socket timeouts make an enqueue or a drain give up in a few
#: seconds. The tests assert that it gives up by itself (a timeout or connection error), with this
#: much time to notice a hang: a liveness bound, not a performance target.
HANG_S = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private server with an AOF fsynced on every write, in a data dir that outlives a stop."""
    embedded = EmbeddedRedis(
        data_dir=tmp_path / "redis", appendonly=True, extra_args=["--appendfsync", "always"]
    )
    embedded.start()
    yield embedded
    if embedded.pid is not None:
        os.kill(embedded.pid, signal.SIGCONT)  # in case a test froze it
    embedded.stop()


def queued_recipients(conn: redis.Redis) -> set[str]:
    """Recipients of every job waiting in the queue."""
    out: set[str] = set()
    for raw in conn.lrange("rq:queue:emails", 0, -1):
        job = Job.fetch(raw.decode(), connection=conn, serializer=JSONSerializer)
        payload = job.kwargs["payload"]
        emails = payload["emails"] if payload["kind"] == "batch" else [payload["email"]]
        out |= {address for email in emails for address in email["to"]}
    return out


def timed(call: Callable[[], Any]) -> dict[str, Any]:
    """Run ``call``; return its result or exception and how long it took."""
    started = time.monotonic()
    outcome: dict[str, Any] = {}
    try:
        outcome["result"] = call()
    except Exception as exc:
        outcome["error"] = exc
    outcome["elapsed"] = time.monotonic() - started
    return outcome


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(timed(call)), name="under-test", daemon=True)
    thread.start()
    return thread, box


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_redis_restart_in_the_middle_of_a_drain(
    how: str, server: EmbeddedRedis, fake_resend: FakeResend
) -> None:
    """Scenario b, drain: Redis is stopped (SIGTERM) or crashes (SIGKILL) while a drain has jobs
    claimed and a send at Resend. The drain ends with a clear QueueError within a few seconds;
    after the restart (AOF) later drains deliver every email exactly once."""
    conn = redis.Redis.from_url(server.url)
    settings = make_settings(fake_resend, server.url)
    ledger = Ledger(f"b/redis-{how}-mid-drain", conn, fake_resend)
    singles = people(4, "d")
    for address in singles:
        send_email(to=address, subject="Hi", text="x", connection=conn, settings=settings)
    guests = people(3, "dg")
    send_event_email("mid-drain", guests, "Launch", text="x", connection=conn, settings=settings)
    ledger.expect(singles + guests)
    gate = fake_resend.hold()
    thread, outcome = in_thread(lambda: drain(settings=settings))  # its own connection, as deployed
    try:
        assert gate.arrived.wait(20), "the drain never reached Resend"
        if how == "stop":
            server.stop()
        else:
            server.kill()
    finally:
        gate.release()  # Resend accepts; the drain cannot ack it
    thread.join(HANG_S)
    assert not thread.is_alive(), f"the drain still hangs {HANG_S}s after Redis went away"
    error = outcome.get("error")
    assert isinstance(error, QueueError), outcome
    assert str(error).startswith("drain: cannot reach Redis"), str(error)
    assert isinstance(error.__cause__, redis.ConnectionError | redis.TimeoutError), repr(error.__cause__)
    server.restart()
    left = registry_sizes(conn)
    assert left["started"] == 5, left  # every claim survived the restart, unacked
    reports = recover(conn, settings)
    counts = ledger.finish(
        outage=how,
        drain_error=type(error).__name__,
        drain_gave_up_after_s=round(outcome["elapsed"], 2),
        claims_left=left["started"],
        recovered=sum(r.recovered for r in reports),
    )
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert counts.replays == 5  # each unacked send went again, and Resend answered from its cache


MOMENTS = ["server_down", "crash_before_write", "crash_after_write", "restart_while_retrying"]


def outage_during(
    moment: str, server: EmbeddedRedis, proxy: RedisProxy, call: Callable[[], Any]
) -> dict[str, Any]:
    """Run ``call`` (an enqueue through ``proxy``) while Redis goes away at ``moment``; the server
    is running again when this returns."""
    if moment == "server_down":
        server.stop()
        outcome = timed(call)
    else:
        trap = proxy.arm(b"EVALSHA")
        thread, outcome = in_thread(call)
        assert trap.request_seen.wait(10), "the enqueue script never reached the proxy"
        if moment == "crash_before_write":
            server.kill()
            trap.drop_request()
        else:
            trap.forward()
            assert trap.reply_seen.wait(10), "the server never answered the enqueue script"
            if moment == "restart_while_retrying":
                proxy.hold_new_connections()
            server.kill()
            trap.drop_reply()
            if moment == "restart_while_retrying":
                wait_for(lambda: proxy.waiting > 0, 10, "the client to retry during the outage")
                server.restart()
                proxy.open_new_connections()
        thread.join(30)
    if server.pid is None:
        server.restart()
    return outcome


def assert_gave_up_clearly(moment: str, outcome: dict[str, Any]) -> None:
    """A clear QueueError within a few seconds; or success if the server came back in time."""
    error = outcome.get("error")
    if moment == "restart_while_retrying":
        assert error is None, outcome  # the retried script ran again and knew its own token
    else:
        assert isinstance(error, QueueError), outcome
        assert str(error).startswith("enqueue: cannot reach Redis"), str(error)


def written(moment: str) -> bool:
    """Whether the first call's write reached the server (and, fsynced, survived the restart)."""
    return moment in ("crash_after_write", "restart_while_retrying")


@pytest.mark.parametrize("moment", MOMENTS)
def test_redis_restart_during_send_event_email(
    moment: str, server: EmbeddedRedis, fake_resend: FakeResend
) -> None:
    """Scenario b, enqueue: Redis goes away during a 150-recipient ``send_event_email`` (2 batch
    jobs): already down; crashing before the write reaches it; crashing after the write with the
    reply lost; or restarting while the client retries. The call raises a clear QueueError within
    a few seconds (or, if the server is back in time, succeeds); after the restart either all
    recipients are queued or none; the app's retry of the same call then delivers each once."""
    direct = redis.Redis.from_url(server.url)
    ledger = Ledger(f"b/redis-outage-during-send_event_email/{moment}", direct, fake_resend)
    with redis_proxy(server.port) as proxy:
        settings = make_settings(fake_resend, proxy.url)  # the app connects through the proxy
        before = people(2, "early")
        for address in before:  # queued before the outage; also loads the enqueue script
            send_email(to=address, subject="Hi", text="x", settings=settings)
        guests = people(150, "guest")
        ledger.expect(before + guests)

        def call() -> list[str]:
            return send_event_email("gala-2026", guests, "You're invited", text="x", settings=settings)

        outcome = outage_during(moment, server, proxy, call)
        queued = queued_recipients(direct) & set(guests)
        markers = len(list(direct.scan_iter(match="emailqueue:dedup:*")))
        assert queued in (set(), set(guests)), f"half a fan-out was queued: {len(queued)} of 150"
        assert markers == (150 if queued else 0), markers
        assert queued == (set(guests) if written(moment) else set())
        assert_gave_up_clearly(moment, outcome)
        if "result" in outcome:
            assert len(outcome["result"]) == 2
        retry = call()  # the app retries the same call
        assert len(retry) == (0 if queued else 2)
    reports = recover(direct, make_settings(fake_resend, server.url))
    error = outcome.get("error")
    counts = ledger.finish(
        moment=moment,
        call=type(error).__name__ if error else "ok",
        call_s=round(outcome["elapsed"], 2),
        queued_by_first_call=len(queued),
        queued_by_retry=len(retry),
        drains=len(reports),
    )
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert counts.accepted == 152


@pytest.mark.parametrize("moment", MOMENTS)
def test_redis_restart_during_send_email_with_an_idempotency_key(
    moment: str, server: EmbeddedRedis, fake_resend: FakeResend
) -> None:
    """Scenario b, enqueue: as above for ``send_email(..., idempotency_key=...)``: whatever the
    moment, the app's retry with the same key returns the same job id and the email goes out
    once (without a key an app cannot tell whether a write that raised was stored)."""
    direct = redis.Redis.from_url(server.url)
    ledger = Ledger(f"b/redis-outage-during-keyed-send_email/{moment}", direct, fake_resend)
    with redis_proxy(server.port) as proxy:
        settings = make_settings(fake_resend, proxy.url)
        send_email(to="early@example.com", subject="Hi", text="x", settings=settings)
        ledger.expect(["early@example.com", "order@example.com"])

        def call() -> str:
            return send_email(
                to="order@example.com",
                subject="Receipt #1042",
                text="x",
                idempotency_key="receipt-1042",
                settings=settings,
            )

        outcome = outage_during(moment, server, proxy, call)
        queued = queued_recipients(direct) & {"order@example.com"}
        assert bool(queued) == written(moment)
        assert_gave_up_clearly(moment, outcome)
        retry = call()
        if "result" in outcome:
            assert retry == outcome["result"]
        assert direct.llen("rq:queue:emails") == 2  # the retry queued nothing twice
    reports = recover(direct, make_settings(fake_resend, server.url))
    error = outcome.get("error")
    counts = ledger.finish(
        moment=moment,
        call=type(error).__name__ if error else "ok",
        call_s=round(outcome["elapsed"], 2),
        queued_by_first_call=len(queued),
        drains=len(reports),
    )
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert counts.accepted == 2


@pytest.mark.slow
def test_enqueue_against_a_frozen_redis_gives_up_within_a_few_seconds(
    server: EmbeddedRedis, fake_resend: FakeResend
) -> None:
    """Scenario b, enqueue against a server that accepts connections but does not answer
    (SIGSTOP: a hung host or a black-holed network path). The call must raise a clear
    QueueError within a few seconds, not hang a web request; after the server resumes, all or
    none of the fan-out is queued and a retry delivers each recipient once."""
    direct = redis.Redis.from_url(server.url)
    settings = make_settings(fake_resend, server.url)
    ledger = Ledger("b/frozen-redis-during-send_event_email", direct, fake_resend)
    guests = people(150, "frozen")
    ledger.expect(guests)

    def call() -> list[str]:
        return send_event_email("frozen-gala", guests, "You're invited", text="x", settings=settings)

    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        thread, outcome = in_thread(call)
        thread.join(HANG_S)  # while the server is still frozen: the call must give up on its own
        gave_up = not thread.is_alive() and isinstance(outcome.get("error"), QueueError)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    thread.join(60)
    wait_for(lambda: direct.ping(), 10, "the server to answer again")
    queued = queued_recipients(direct) & set(guests)
    assert queued in (set(), set(guests)), f"half a fan-out was queued: {len(queued)} of 150"
    call()  # the app retries
    recover(direct, settings)
    counts = ledger.finish(
        call=type(outcome.get("error")).__name__ if outcome.get("error") else "ok",
        call_s=round(outcome["elapsed"], 2),
    )
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts
    assert gave_up, f"the enqueue did not give up on a frozen server by itself: {outcome}"
