"""Packing (issue 13): a backlog of queued single emails at Resend's default 2 requests/s.

The same backlog goes through today's single path in the same run: its Redis commands are
counted (no rate limit, so it finishes in seconds); its time at 2 req/s is computed (n requests
÷ 2 req/s), not waited for.
"""

from __future__ import annotations

import time

from emailqueue import drain, send_email

from ._counting import lean_client, measure
from ._env import Env, Sample, expect

RATE = 2.0  # Resend's default team limit, requests/s


def _backlog(env: Env, n: int) -> None:
    settings = env.settings()
    for i in range(n):
        send_email(to=f"p{i}@example.com", subject="Hi", text="x", connection=env.plain, settings=settings)


def pack_backlog(env: Env, n: int) -> Sample:
    """``n`` queued single emails, one drain until empty, fake and RESEND_RATE_LIMIT at 2 req/s,
    packing on; commands counted on the server for the drain, timed from its start to its return."""
    env.fresh(rate_limit=RATE)
    settings = env.settings(rate_limit=RATE, email_pack=True)
    _backlog(env, n)
    conn, trips = lean_client(env.url)
    with measure(env.observer, trips) as packed:
        start = time.monotonic()
        report = drain(connection=conn, settings=settings, max_jobs=10_000, time_budget=600)
        elapsed = time.monotonic() - start
    expect("pack: emails accepted", (report.sent, len(env.fake.accepted)), (n, n))
    too_many = sum(1 for r in env.fake.requests if r.status == 429)
    requests = len(env.fake.requests)
    sent_keys = env.plain.keys("emailqueue:sent:*")  # the lifecycle's hourly sent index
    id_bytes = sum(int(env.plain.memory_usage(k) or 0) for k in sent_keys)
    recorded = sum(1 for k in sent_keys for f in env.plain.hkeys(k) if f.startswith(b"r:"))
    expect("pack: Resend ids recorded", recorded, n)

    env.fresh()
    _backlog(env, n)
    single_settings = env.settings(email_pack=False)
    with measure(env.observer, trips) as single:
        report_single = drain(connection=conn, settings=single_settings, max_jobs=10_000, time_budget=600)
    expect("single path: emails accepted", report_single.sent, n)
    conn.close()
    env.notes[f"packing drain of {n} single emails"] = {
        "emailqueue": packed.by_command,
        "single path": single.by_command,
    }
    env.details["pack requests for the backlog"] = f"{requests} (largest pack {report.largest_pack})"
    return {
        "pack_s": elapsed,
        "pack_single_s": n / RATE,
        "pack_cmds": packed.commands / n,
        "pack_single_cmds": single.commands / n,
        "pack_429": too_many,
        "pack_largest": report.largest_pack,
        "pack_id_bytes": id_bytes / n,
    }
