"""Redis cost per operation (issue 6, targets 1-4): server-side commands and client round trips.

Each figure is taken warm: the connection is open and the Lua scripts are loaded (see
:func:`warm_up`), as in the steady state of a deployed app. The baseline uses a redis-py client
with its defaults, as a stock RQ user has it; emailqueue's client is configured like its own
``connect()``. A new connection's handshake is not a round trip of the code under test, but
its commands (a SimpleWorker burst opens one for pubsub) are counted on the server.
"""

from __future__ import annotations

import math
import uuid

from emailqueue import drain, send_email, send_event_email

from . import _rawrq as raw
from ._counting import Cost, lean_client, measure, stock_client
from ._env import Env, Sample, expect

CHUNK = 100  # recipients per batch job (Resend's batch limit)


def _singles(env: Env, n: int, prefix: str = "u") -> None:
    settings = env.settings()
    for i in range(n):
        send_email(
            to=f"{prefix}{i}@example.com", subject="Hi", text="x", connection=env.plain, settings=settings
        )


def _note(env: Env, key: str, eq: Cost, base: Cost) -> None:
    env.notes[key] = {"emailqueue": eq.by_command, "raw RQ": base.by_command}


def warm_up(env: Env) -> None:
    """Load every script and import every code path once, so no measured run pays for it."""
    env.fresh()
    settings = env.settings()
    _singles(env, 2, prefix="warm")
    send_event_email(
        "warm", ["a@example.com", "b@example.com"], "Hi", text="x", connection=env.plain, settings=settings
    )
    drain(connection=env.plain, settings=settings, time_budget=60)
    queue = raw.raw_queue(env.plain)
    raw.enqueue_one(queue, env.fake.url, env.fake.api_key, 0)
    raw.burst(queue)
    env.fresh()


def drain_cost(env: Env, n: int) -> Sample:
    """Target 1: commands and round trips per delivered email, ``n`` single emails."""
    env.fresh()
    settings = env.settings()
    _singles(env, n)
    conn, trips = lean_client(env.url)
    with measure(env.observer, trips) as eq:
        report = drain(connection=conn, settings=settings, max_jobs=n, time_budget=600)
    expect("drain: emails sent", (report.sent, len(env.fake.accepted)), (n, n))

    env.fresh()
    raw.enqueue_many(raw.raw_queue(env.plain), env.fake.url, env.fake.api_key, n)
    bconn, btrips = stock_client(env.url)
    with measure(env.observer, btrips) as base:
        raw.burst(raw.raw_queue(bconn))
    expect("raw burst: emails sent", len(env.fake.accepted), n)
    conn.close()
    bconn.close()
    _note(env, f"drain of {n} single emails", eq, base)
    return {
        "drain_cmds": eq.commands / n,
        "drain_trips": eq.round_trips / n,
        "raw_burst_cmds": base.commands / n,
        "raw_burst_trips": base.round_trips / n,
    }


def send_cost(env: Env) -> Sample:
    """Target 2: one ``send_email`` against one ``Queue.enqueue``, both warm."""
    env.fresh()
    settings = env.settings()
    conn, trips = lean_client(env.url)
    send_email(to="w@example.com", subject="Hi", text="x", connection=conn, settings=settings)
    with measure(env.observer, trips) as eq:
        send_email(to="a@example.com", subject="Hi", text="x", connection=conn, settings=settings)

    bconn, btrips = stock_client(env.url)
    queue = raw.raw_queue(bconn)
    raw.enqueue_one(queue, env.fake.url, env.fake.api_key, 0)
    with measure(env.observer, btrips) as base:
        raw.enqueue_one(queue, env.fake.url, env.fake.api_key, 1)
    conn.close()
    bconn.close()
    _note(env, "one send_email vs one Queue.enqueue", eq, base)
    return {
        "send_cmds": eq.commands,
        "send_trips": eq.round_trips,
        "raw_enqueue_cmds": base.commands,
        "raw_enqueue_trips": base.round_trips,
    }


def fanout_cost(env: Env, n: int) -> Sample:
    """Target 3: ``send_event_email`` to ``n`` recipients against ``enqueue_many`` of ``n`` jobs."""
    env.fresh()
    settings = env.settings()
    chunks = math.ceil(n / CHUNK)
    people = [f"guest{i}@example.com" for i in range(n)]
    conn, trips = lean_client(env.url)
    with measure(env.observer, trips) as eq:
        ids = send_event_email(
            f"gala-{uuid.uuid4().hex}", people, "Invite", text="x", connection=conn, settings=settings
        )
    expect("fan-out: chunk jobs", len(ids), chunks)

    bconn, btrips = stock_client(env.url)
    with measure(env.observer, btrips) as base:
        raw.enqueue_many(raw.raw_queue(bconn), env.fake.url, env.fake.api_key, n)
    conn.close()
    bconn.close()
    _note(env, f"fan-out to {n} recipients vs enqueue_many({n})", eq, base)
    return {
        "fanout_cmds": eq.commands / n,
        "fanout_trips": eq.round_trips / chunks,
        "raw_many_cmds": base.commands / n,
        "raw_many_trips": base.round_trips / chunks,
    }


def idle_cost(env: Env) -> Sample:
    """Target 4: a drain run on an empty queue against a SimpleWorker burst on an empty queue.

    Both are measured on their second run: the first burst cleans RQ's registries, which its
    ``SET NX EX 899`` guard then skips for 15 minutes (the cheaper, common case for RQ).
    """
    env.fresh()
    settings = env.settings()
    conn, trips = lean_client(env.url)
    drain(connection=conn, settings=settings)
    with measure(env.observer, trips) as eq:
        report = drain(connection=conn, settings=settings)
    expect("idle drain", (report.processed, report.stopped), (0, "empty"))

    bconn, btrips = stock_client(env.url)
    raw.burst(raw.raw_queue(bconn))
    with measure(env.observer, btrips) as base:
        raw.burst(raw.raw_queue(bconn))
    conn.close()
    bconn.close()
    _note(env, "idle run (empty queue)", eq, base)
    return {
        "idle_cmds": eq.commands,
        "idle_trips": eq.round_trips,
        "raw_idle_cmds": base.commands,
        "raw_idle_trips": base.round_trips,
    }
