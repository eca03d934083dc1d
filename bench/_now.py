"""Send now (issue 11, target 9): what ``send_email(now=True)`` costs in Redis, and how long a
person waits for the email.

Cost: one immediate email, warm, with ``RESEND_RATE_LIMIT=2`` and an idle limiter (a sign-in
email on a quiet system), against what stock RQ needs to deliver one email at once from the
caller: ``Queue.enqueue`` plus a ``SimpleWorker`` burst in the same process.

Latency: from the call to the moment the fake Resend accepted the email, with the fake at 50 ms.
The limiter is cleared before each call: the state it is in after half a second without sends.
The baseline is the cron path, computed: a cron run once a minute finds an email 30 s after it
was queued on average (57 s at the 95th percentile), before its own run time.
"""

from __future__ import annotations

import statistics
import time

from emailqueue import send_email
from emailqueue._ratelimit import limiter_key

from . import _rawrq as raw
from ._counting import lean_client, measure, stock_client
from ._env import Env, Sample, Watcher, expect

LATENCY_S = 0.05
RATE = 2.0
#: Cron path at one run a minute: an email waits for the next run, uniformly 0-60 s.
CRON_MEAN_MS = 30_000.0
CRON_P95_MS = 57_000.0


def now_cost(env: Env) -> Sample:
    """Target 9a/9b: commands and round trips of one immediate email (enqueue + claim + ack)."""
    env.fresh()
    settings = env.settings(rate_limit=RATE)
    conn, trips = lean_client(env.url)
    send_email(to="w@example.com", subject="Hi", text="x", connection=conn, settings=settings, now=True)
    env.plain.delete(limiter_key("emails"))
    with measure(env.observer, trips) as eq:
        send_email(to="a@example.com", subject="Hi", text="x", connection=conn, settings=settings, now=True)
    expect("send now: emails accepted", len(env.fake.accepted), 2)

    env.fresh()
    bconn, btrips = stock_client(env.url)
    queue = raw.raw_queue(bconn)
    raw.enqueue_one(queue, env.fake.url, env.fake.api_key, 0)
    raw.burst(queue)
    with measure(env.observer, btrips) as base:
        raw.enqueue_one(queue, env.fake.url, env.fake.api_key, 1)
        raw.burst(queue)
    expect("raw enqueue + burst: emails accepted", len(env.fake.accepted), 2)
    conn.close()
    bconn.close()
    env.notes["one email sent now vs Queue.enqueue + SimpleWorker burst"] = {
        "emailqueue": eq.by_command,
        "raw RQ": base.by_command,
    }
    return {
        "now_cmds": eq.commands,
        "now_trips": eq.round_trips,
        "raw_now_cmds": base.commands,
        "raw_now_trips": base.round_trips,
    }


def now_latency(env: Env, n: int) -> Sample:
    """Target 9c/9d: call -> accepted by the fake, ``n`` immediate emails one after another."""
    env.fresh(latency=LATENCY_S)
    settings = env.settings(rate_limit=RATE)
    conn, _ = lean_client(env.url)
    send_email(to="w@example.com", subject="Hi", text="x", connection=conn, settings=settings, now=True)
    accepted_ms: list[float] = []
    returned_ms: list[float] = []
    with Watcher(env.fake, interval=0.001) as watch:
        for i in range(n):
            env.plain.delete(limiter_key("emails"))
            start = time.monotonic()
            send_email(
                to=f"u{i}@example.com", subject="Hi", text="x", connection=conn, settings=settings, now=True
            )
            returned_ms.append((time.monotonic() - start) * 1000)
            accepted_ms.append((watch.wait_for(i + 2, timeout=5) - start) * 1000)
    conn.close()
    expect("send now: emails accepted", len(env.fake.accepted), n + 1)
    env.details["send now, fake latency"] = f"{LATENCY_S * 1000:.0f} ms, {n} emails a repetition"
    env.details["send now, call -> return (reply and ack included): p50 / p95"] = (
        f"{statistics.median(returned_ms):.1f} / {_p95(returned_ms):.1f} ms"
    )
    return {
        "now_p50_ms": statistics.median(accepted_ms),
        "now_p95_ms": _p95(accepted_ms),
        "cron_mean_ms": CRON_MEAN_MS,
        "cron_p95_ms": CRON_P95_MS,
        "fake_latency_ms": LATENCY_S * 1000,
    }


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]
