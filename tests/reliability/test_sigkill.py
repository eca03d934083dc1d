"""a. SIGKILL of a worker process at a random point of a send: nothing lost, nothing sent twice.

Each seed picks the kind of email (single jobs, a fan-out batch job, or both), how many (3-6),
which request the fault hits, the drain's concurrency, and one of four kill points:

- ``claimed``: the job is taken off the queue (in ``rq:wip:emails``) but nothing has reached
  Resend: a 429's ``retry-after`` elsewhere paused the shared rate limit, so the sender waits;
- ``in_flight``: the request is at Resend, held before it is accepted; Resend accepts it after
  the sender is dead (the dead process's send went through);
- ``accepted``: Resend accepted the email and its reply is still on the way (a timeout after
  accept), so the sender never acked it;
- ``anytime`` (drains): Resend answers with a little latency and the kill lands at a random
  moment. A drain claims a job in one atomic step; an RQ worker takes two steps before its work
  horse marks the job started, and those two moments are tested one by one in
  test_vm_worker_windows.py, so the random kill is not left to find them by chance.

The machine dies: the process and all its children (RQ's work horse, its scheduler) are frozen
and SIGKILLed. Later drains (in-process, ``wall_clock`` past the abandonment window) must then
deliver every recipient exactly once: a re-send after a crash carries the same Idempotency-Key, so
Resend answers it from its idempotency cache instead of sending again.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from emailqueue import Settings, send_email, send_event_email
from emailqueue._ratelimit import RateLimiter, limiter_key
from emailqueue.testing import FakeResend
from emailqueue.testing._fake_resend import Gate

from .conftest import people, recover
from .faults import age_redis, sigkill_tree, start_drain, start_rq_worker, wait_for, worker_env
from .ledger import Ledger, registry_sizes

pytestmark = pytest.mark.real_redis

POINTS = {
    "drain": ("claimed", "in_flight", "accepted", "anytime"),
    "rq-worker": ("claimed", "in_flight", "accepted"),
}
SEEDS = range(20)
#: How late Resend's reply comes after it accepted the email at the ``accepted`` point.
LATE_REPLY_S = 0.5
#: The rate-limit pause that holds a claimed job before its send (``claimed``).
PAUSE_S = 10.0
#: Resend's latency at the ``anytime`` point, so that a run lasts long enough to be cut anywhere.
ANYTIME_LATENCY_S = 0.05


@dataclass(frozen=True)
class Plan:
    """What one seed does."""

    seed: int
    point: str
    singles: int
    fanout: int  # recipients of one send_event_email (one batch job), or 0
    fanout_first: bool
    target: int  # which request, in the order Resend processes them, the fault hits
    concurrency: int  # the drain's DRAIN_CONCURRENCY (an RQ worker runs one job at a time)

    @property
    def jobs(self) -> int:
        return self.singles + (1 if self.fanout else 0)

    def describe(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "point": self.point,
            "singles": self.singles,
            "fanout": self.fanout,
            "target": self.target,
            "concurrency": self.concurrency,
        }


def make_plan(kind: str, seed: int) -> Plan:
    rng = random.Random(f"{kind}-{seed}")
    n = rng.randint(3, 6)
    shape = rng.choice(["singles", "fanout", "mixed"])
    fanout = {"singles": 0, "fanout": n, "mixed": rng.randint(2, n - 1)}[shape]
    jobs = n - fanout + (1 if fanout else 0)
    return Plan(
        seed=seed,
        point=POINTS[kind][seed % len(POINTS[kind])],
        singles=n - fanout,
        fanout=fanout,
        fanout_first=rng.random() < 0.5,
        target=rng.randrange(jobs),
        concurrency=rng.choice([1, 4]),
    )


def enqueue(plan: Plan, conn: redis.Redis, settings: Settings, ledger: Ledger) -> None:
    def singles() -> None:
        for address in people(plan.singles, f"s{plan.seed}-"):
            send_email(to=address, subject="Hi", text="x", connection=conn, settings=settings)
            ledger.expect([address])

    def fanout() -> None:
        if plan.fanout:
            guests = people(plan.fanout, f"g{plan.seed}-")
            ids = send_event_email(
                f"launch-{plan.seed}", guests, "Launch", text="x", connection=conn, settings=settings
            )
            assert len(ids) == 1 and ids[0].startswith("eb_")
            ledger.expect(guests)

    for step in (fanout, singles) if plan.fanout_first else (singles, fanout):
        step()


def hold_nth(fake: FakeResend, n: int) -> Gate:
    """Hold the n-th request Resend processes (0-based); the ones before it go through."""
    gates = [fake.hold() for _ in range(n + 1)]

    def pass_through() -> None:
        for gate in gates[:-1]:
            if not gate.arrived.wait(30):
                return
            gate.release()

    threading.Thread(target=pass_through, name="pass-through", daemon=True).start()
    return gates[-1]


def claimed(conn: redis.Redis) -> bool:
    """A job is in the started registry and marked started (for an RQ worker: its work horse
    has begun the job; the moments before that are covered by test_vm_worker_windows.py), or a
    packing drain has claimed a pack."""
    if conn.zcard("emailqueue:packs:emails"):
        return True
    members = conn.zrange("rq:wip:emails", 0, -1)
    return any(conn.hget(f"rq:job:{m.decode().rsplit(':', 1)[0]}", "status") == b"started" for m in members)


def answered(fake: FakeResend) -> bool:
    """Resend has replied (to a live or a dead client) to every request it accepted."""
    keys = {r.headers.get("idempotency-key") for r in fake.requests if r.status == 200}
    return set(fake.accepted_count_by_key()) <= keys


def run_kill_scenario(
    kind: str,
    seed: int,
    conn: redis.Redis,
    redis_url: str,
    fake: FakeResend,
    settings: Settings,
    ledger: Ledger,
    workdir: Path,
    *,
    pack: bool = False,
) -> None:
    plan = make_plan(kind, seed)
    settings = settings.model_copy(update={"email_pack": pack})
    if pack:  # the singles ride in one request: the fault hits one of at most two requests
        plan = replace(plan, target=plan.target % ((plan.singles > 0) + (plan.fanout > 0)))
    rng = random.Random(seed)
    enqueue(plan, conn, settings, ledger)
    extra = {
        "RESEND_TIMEOUT_S": "5",
        "RESEND_CONNECT_TIMEOUT_S": "2",
        "DRAIN_CONCURRENCY": str(plan.concurrency),
        "EMAIL_PACK": "true" if pack else "false",
    }
    gate: Gate | None = None
    if plan.point == "claimed":
        # Another sender just got a 429 with retry-after: every sender waits for the shared slot.
        extra["RESEND_RATE_LIMIT"] = "10"
        RateLimiter(conn, limiter_key("emails"), 10).pause(PAUSE_S)
    elif plan.point == "in_flight":
        gate = hold_nth(fake, plan.target)
    elif plan.point == "accepted":
        if plan.target:
            fake.timeout_after_accept(plan.target, 0.0)
        fake.timeout_after_accept(1, LATE_REPLY_S)
    else:
        fake.latency = ANYTIME_LATENCY_S
    env = worker_env(redis_url, fake.api_key, fake.url, **extra)
    with open(workdir / f"{kind}.log", "wb") as log:
        if kind == "drain":
            proc = start_drain(env, log, workdir)
        else:
            proc = start_rq_worker(redis_url, env, log, workdir)
        try:
            if plan.point == "claimed":
                wait_for(lambda: claimed(conn), 30, "a job to be claimed")
            elif plan.point == "in_flight":
                assert gate is not None and gate.arrived.wait(30), "the request never reached Resend"
            elif plan.point == "accepted":
                wait_for(lambda: len(fake.accepted_count_by_key()) > plan.target, 30, "the accept")
            else:  # from the first claim to a little past the last reply
                queued = conn.llen("rq:queue:emails")
                wait_for(lambda: conn.llen("rq:queue:emails") < queued, 30, "the first claim")
                time.sleep(rng.uniform(0, ANYTIME_LATENCY_S * (plan.jobs / plan.concurrency + 1)))
            sent_at_kill = len(fake.requests)
            keys_at_kill = len(fake.accepted_count_by_key())
            killed = sigkill_tree(proc)
        finally:
            if proc.poll() is None:
                sigkill_tree(proc)
            if gate is not None:
                gate.release()  # Resend goes on with the request the dead process sent
    if plan.point == "claimed":
        assert sent_at_kill == 0, "at the 'claimed' point nothing may have reached Resend yet"
    if plan.point == "in_flight":
        wait_for(lambda: len(fake.accepted_count_by_key()) > keys_at_kill, 10, "the held request's accept")
    wait_for(lambda: answered(fake), 10, "Resend to answer what the dead process sent")
    left = registry_sizes(conn)
    if plan.point in ("claimed", "in_flight", "accepted"):
        claims = left["started"] + left["packs"]
        assert claims >= 1, f"the kill at {plan.point!r} left no claim behind: {left}"
    age_redis(conn)  # a later run: the dead worker's scheduler lock and keys have expired
    reports = recover(conn, settings)
    counts = ledger.finish(
        **plan.describe(),
        processes_killed=len(killed),
        claims_left=left["started"] + left["packs"],
        packing=pack,
        recovered=sum(r.recovered for r in reports),
        later_runs=len(reports),
    )
    assert (counts.lost, counts.duplicated, counts.duplicated_keys, counts.unexpected) == (0, 0, 0, 0), counts
    assert (counts.stuck, counts.failed) == (0, 0), counts


@pytest.mark.slow
@pytest.mark.parametrize("pack", [False, True], ids=["single", "packing"])
@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_of_a_drain_at_a_random_point(
    seed: int,
    pack: bool,
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    rsettings: Settings,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """Scenario a, serverless drain: a drain subprocess (``emailqueue.drain()``) is SIGKILLed
    before, during or after a send (seeded); later drains deliver every email exactly once. With
    packing (``EMAIL_PACK=true``) the single emails the drain claims ride in one batch request:
    a pack killed at any point is recovered as a unit, same body, same Idempotency-Key."""
    scenario = "a/sigkill-drain" + ("-packing" if pack else "")
    run_kill_scenario(
        "drain", seed, real_conn, redis_url, fake_resend, rsettings, new_ledger(scenario), tmp_path, pack=pack
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_of_a_vm_rq_worker_at_a_random_point(
    seed: int,
    real_conn: redis.Redis,
    redis_url: str,
    fake_resend: FakeResend,
    rsettings: Settings,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    """Scenario a, VM worker: ``rq worker --with-scheduler --serializer json --url URL emails``
    and its work horse are SIGKILLed before, during or after a send (seeded); later drains
    deliver every email exactly once."""
    run_kill_scenario(
        "rq-worker",
        seed,
        real_conn,
        redis_url,
        fake_resend,
        rsettings,
        new_ledger("a/sigkill-rq-worker"),
        tmp_path,
    )
