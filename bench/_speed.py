"""Delivery speed (issue 6, targets 5 and 6).

Throughput is timed from the start of a run to the moment the fake Resend has accepted the
last email, for both sides alike: a burst worker's teardown (RQ's pubsub join can stall it for
a second) and a drain's final bookkeeping are left out of both.
"""

from __future__ import annotations

import time
import uuid

from emailqueue import drain, send_email, send_event_email

from . import _rawrq as raw
from ._env import Env, Sample, Watcher, expect

LATENCY_S = 0.05
BATCH_RATE = 2.0  # Resend's default team limit, requests/s


def throughput(env: Env, n: int) -> Sample:
    """Target 5: emails/s with the fake at 50 ms latency and no rate limit."""
    env.fresh(latency=LATENCY_S)
    settings = env.settings()
    for i in range(n):
        send_email(to=f"u{i}@example.com", subject="Hi", text="x", connection=env.plain, settings=settings)
    with Watcher(env.fake) as watch:
        start = time.monotonic()
        report = drain(connection=env.plain, settings=settings, max_jobs=n, time_budget=600)
        last = watch.wait_for(n, timeout=5)
    expect("drain at 50 ms: emails sent", report.sent, n)
    drain_rate = n / (last - start)

    env.fresh(latency=LATENCY_S)
    queue = raw.raw_queue(env.plain)
    raw.enqueue_many(queue, env.fake.url, env.fake.api_key, n)
    with Watcher(env.fake) as watch:
        start = time.monotonic()
        raw.burst(queue)
        last = watch.wait_for(n, timeout=5)
    expect("raw burst at 50 ms: emails sent", len(env.fake.accepted), n)
    env.details["drain concurrency at 50 ms"] = str(settings.concurrency)
    return {"drain_rate": drain_rate, "raw_rate": n / (last - start)}


def batch_fanout(env: Env, n: int) -> Sample:
    """Target 6: ``send_event_email`` to ``n`` recipients, then drain until empty, against a
    fake that enforces 2 requests/s; timed from the enqueue until the drain returns."""
    env.fresh(rate_limit=BATCH_RATE)
    settings = env.settings(rate_limit=BATCH_RATE)
    people = [f"guest{i}@example.com" for i in range(n)]
    start = time.monotonic()
    send_event_email(
        f"launch-{uuid.uuid4().hex}", people, "Launch", text="x", connection=env.plain, settings=settings
    )
    report = drain(connection=env.plain, settings=settings, max_jobs=10_000, time_budget=600)
    elapsed = time.monotonic() - start
    expect("batch fan-out: emails accepted", (report.sent, len(env.fake.accepted)), (n, n))
    rejected = sum(1 for r in env.fake.requests if r.status == 429)
    return {"batch_s": elapsed, "batch_429": rejected, "single_s": n / BATCH_RATE}
