"""Cold start (issue 6, target 8): a fresh interpreter importing the Vercel entry point
(``api/index.py``, which builds the app) against one importing only the stack it stands on.

Wall time is what a cold function pays; on a shared machine it also carries whatever else runs,
so the CPU time the child used (user + sys, from ``RUSAGE_CHILDREN``) is reported beside it.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ._env import Sample

ROOT = Path(__file__).resolve().parents[1]
STACK = "import fastapi, rq, httpx, pydantic_settings, redis"
APP = "import api.index"
#: What the first cron request adds: the app imports the drain (and with it rq) only when a route
#: runs, so this row shows the cost a cold function pays by the end of its first cron run.
APP_FIRST_RUN = "import api.index, emailqueue._drain"


def _time(code: str) -> tuple[float, float]:
    """(wall ms, CPU ms) of ``python -c code`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1000, cpu * 1000


def warm_up() -> None:
    """One run of each first, so the .pyc files exist and the OS cache is warm for both."""
    _time(STACK)
    _time(APP)
    _time(APP_FIRST_RUN)


def cold_start(pairs: int = 2) -> Sample:
    """``pairs`` runs of each, alternating which goes first; the medians, in ms."""
    runs: dict[str, list[tuple[float, float]]] = {STACK: [], APP: [], APP_FIRST_RUN: []}
    for i in range(pairs):
        order = (STACK, APP, APP_FIRST_RUN) if i % 2 == 0 else (APP_FIRST_RUN, APP, STACK)
        for code in order:
            runs[code].append(_time(code))
    return {
        "stack_ms": statistics.median(w for w, _ in runs[STACK]),
        "app_ms": statistics.median(w for w, _ in runs[APP]),
        "stack_cpu_ms": statistics.median(c for _, c in runs[STACK]),
        "app_cpu_ms": statistics.median(c for _, c in runs[APP]),
        "first_run_ms": statistics.median(w for w, _ in runs[APP_FIRST_RUN]),
    }
