"""The global rate limit (issue 6, target 7): 3 concurrent drains and a VM ``rq worker`` share
one limiter against a fake Resend that enforces 2 requests/s.

Throughput is the steady-state rate: (accepted - 1) emails over the time from the first
acceptance to the last, i.e. the spacing between sends, so the first email does not count
as a free one. A 429 in the first second (before every sender has taken its first slot) is
reported but does not fail the target, which is about the steady state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from emailqueue import DrainReport, drain, send_email

from ._counting import lean_client
from ._env import Env, Sample, Watcher, expect

RATE = 2.0
DRAINS = 3
WARMUP_S = 1.0


def _rq_command() -> str:
    found = Path(sys.executable).with_name("rq")
    return str(found) if found.exists() else (shutil.which("rq") or "rq")


def global_limit(env: Env, n: int) -> Sample:
    env.fresh(rate_limit=RATE)
    settings = env.settings(rate_limit=RATE)
    for i in range(n):
        send_email(to=f"u{i}@example.com", subject="Hi", text="x", connection=env.plain, settings=settings)
    budget = n / RATE * 1.5 + settings.send_timeout_s + 10
    vm_env = {
        **os.environ,
        "QUEUE_REDIS_URL": env.url,
        "RESEND_API_KEY": env.fake.api_key,
        "RESEND_API_URL": env.fake.url,
        "RESEND_RATE_LIMIT": str(RATE),
    }
    command = [_rq_command(), "worker", "--burst", "--with-scheduler", "--serializer", "json"]
    command += ["--url", env.url, settings.email_queue_name]
    reports: list[DrainReport] = []
    errors: list[BaseException] = []

    def one_drain() -> None:
        conn, _ = lean_client(env.url)
        try:
            reports.append(drain(connection=conn, settings=settings, max_jobs=n, time_budget=budget))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            conn.close()

    with tempfile.TemporaryFile() as log, Watcher(env.fake) as watch:
        start = time.monotonic()
        worker = subprocess.Popen(command, env=vm_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        threads = [threading.Thread(target=one_drain, name=f"bench-drain-{i}") for i in range(DRAINS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            code = worker.wait(timeout=budget)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        watch.wait_for(n, timeout=5)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if errors:
        raise RuntimeError(f"a drain failed: {errors[0]!r}") from errors[0]
    if code != 0:
        raise RuntimeError(f"the VM worker exited with {code}:\n{output[-2000:]}")
    expect("global limit: emails accepted", len(env.fake.accepted), n)
    first, last = watch.accepted_at[0], watch.accepted_at[n - 1]
    rate = (n - 1) / (last - first)
    first_request = watch.requests[0][0] if watch.requests else start
    late_429 = sum(1 for at, status in watch.requests if status == 429 and at > first_request + WARMUP_S)
    all_429 = sum(1 for _, status in watch.requests if status == 429)
    by_drains = sum(r.processed for r in reports)
    env.details["target 7: emails sent by"] = f"the 3 drains {by_drains}, the VM worker {n - by_drains}"
    return {
        "global_rate_pct": rate / RATE * 100,
        "global_429_steady": late_429,
        "global_429_all": all_429,
        "global_wall_s": last - start,
    }
