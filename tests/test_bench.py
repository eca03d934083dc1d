"""``python -m bench``: the quick run works end to end and reports every target of issue 6.

CI runs it to prove the harness works, not to time anything: these tests check the table's
shape and that its numbers parse, never a speed. They also check that the verdicts are honest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench._cli import QUICK, rows

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["1a", "1b", "2a", "2b", "3a", "3b", "4a", "4b", "5", "6a", "6b", "7a", "7b", "8a", "8b", "8c"]
KEYS += ["9a", "9b", "9c", "9d"]
KEYS += ["10"]
KEYS += ["11a", "11b", "11c"]
KEYS += ["12a", "12b", "12c", "12d"]
KEYS += ["13a", "13b", "13c", "13d", "13e"]
NUMBER = r"-?\d+(?:\.\d+)?"

#: Medians that meet every target, for judging the verdicts without running anything.
GOOD = {
    "drain_cmds": 4.4,
    "drain_trips": 0.3,
    "raw_burst_cmds": 63.0,
    "raw_burst_trips": 27.0,
    "send_cmds": 4,
    "send_trips": 1,
    "raw_enqueue_cmds": 8,
    "raw_enqueue_trips": 2,
    "fanout_cmds": 1.0,
    "fanout_trips": 0.1,
    "raw_many_cmds": 3.0,
    "raw_many_trips": 0.2,
    "idle_cmds": 3,
    "idle_trips": 1,
    "raw_idle_cmds": 48,
    "raw_idle_trips": 28,
    "drain_rate": 110.0,
    "raw_rate": 16.0,
    "batch_s": 4.8,
    "batch_429": 0,
    "single_s": 500,
    "global_rate_pct": 95.0,
    "global_429_steady": 0,
    "stack_ms": 900.0,
    "app_ms": 1000.0,
    "stack_cpu_ms": 800.0,
    "app_cpu_ms": 880.0,
    "first_run_ms": 1100.0,
    "raw_idle_cpu_pct": 0.3,
    "dev_idle_cpu_pct": 0.7,
    "now_cmds": 6,
    "now_trips": 2,
    "raw_now_cmds": 60,
    "raw_now_trips": 30,
    "durable_cmds": 7,
    "durable_trips": 1,
    "default_cmds": 6,
    "default_trips": 1,
    "default_everysec_ms": 0.5,
    "raw_enqueue_everysec_ms": 0.6,
    "durable_always_ms": 0.6,
    "default_always_ms": 0.5,
    "raw_enqueue_always_ms": 0.7,
    "now_p50_ms": 60.0,
    "now_p95_ms": 70.0,
    "cron_mean_ms": 30_000.0,
    "cron_p95_ms": 57_000.0,
    "fake_latency_ms": 50.0,
    "webhook_cmds": 5,
    "webhook_trips": 1,
    "webhook_retry_cmds": 2,
    "pack_s": 6.0,
    "pack_single_s": 500.0,
    "pack_cmds": 1.2,
    "pack_single_cmds": 5.5,
    "pack_429": 0,
    "pack_largest": 100,
    "pack_id_bytes": 90.0,
}


def table_rows(text: str) -> dict[str, list[str]]:
    """The results table (the one whose header starts with ``| # |``), by target key."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| # | metric |"))
    found = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        found[cells[0]] = cells
    return found


def test_quick_run_reports_every_target_with_numbers(tmp_path: Path) -> None:
    committed = ROOT / "BENCHMARKS.md"
    before = committed.read_bytes() if committed.exists() else None
    out = tmp_path / "bench.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    found = table_rows(text)
    assert list(found) == KEYS
    for key, (_, metric, baseline, value, ratio, target, result) in found.items():
        assert metric and target, key
        assert re.fullmatch(NUMBER, value), (key, value)
        assert baseline == "—" or re.fullmatch(rf"{NUMBER}( \((cron, )?computed\))?", baseline), (
            key,
            baseline,
        )
        assert ratio == "—" or re.fullmatch(rf"{NUMBER}x", ratio), (key, ratio)
        assert result in (("—",) if target == "informational" else ("PASS", "FAIL")), (key, result)
    assert found["6a"][2].endswith("(computed)")
    assert found["9d"][2].endswith("(cron, computed)")
    # The same table is printed, and the report says what it ran on.
    assert table_rows(done.stdout) == found
    for heading in ("## Machine", "## Versions", "## How each figure is measured"):
        assert heading in text
    for name in ("CPU", "cores", "RAM", "Python", "OS", "rq", "redis", "httpx", "fastapi", "emailqueue"):
        assert re.search(rf"^\| {name} \| \S", text, re.MULTILINE), name
    assert "median of 1 repetition" in text
    # Only the full run regenerates BENCHMARKS.md.
    assert (committed.read_bytes() if committed.exists() else None) == before


def test_every_target_passes_on_figures_that_meet_it() -> None:
    verdicts = {row.key: row.passed for row in rows(GOOD, QUICK)}
    assert list(verdicts) == KEYS
    assert all(verdicts.values()), verdicts


@pytest.mark.parametrize(
    ("figure", "value", "key"),
    [
        ("drain_cmds", 8.1, "1a"),
        ("drain_trips", 3.5, "1b"),
        ("send_cmds", 6, "2a"),  # 4 + the suppression check (issue 14)
        ("send_trips", 2, "2b"),
        ("fanout_cmds", 3.1, "3a"),
        ("fanout_trips", 1.5, "3b"),
        ("idle_cmds", 4, "4a"),
        ("idle_trips", 2, "4b"),
        ("drain_rate", 63.0, "5"),  # under 4x the baseline's 16/s
        ("batch_s", 10.5, "6a"),
        ("batch_429", 1, "6b"),
        ("global_429_steady", 1, "7a"),
        ("global_rate_pct", 89.9, "7b"),
        ("app_ms", 1040.0, "8a"),  # 1.16x the stack's 900 ms
        ("app_cpu_ms", 930.0, "8b"),
        ("now_cmds", 11, "9a"),  # 6 + 3 for the sent record + 1 for the suppression check (issue 14)
        ("now_trips", 3, "9b"),
        ("now_p95_ms", 75.1, "9d"),  # over the fake's 50 ms + 25 ms
        ("dev_idle_cpu_pct", 2.1, "10"),  # issue 12: at most 2% of one core
        ("webhook_cmds", 6, "11a"),  # issue 14: at most 5 per webhook event
        ("webhook_trips", 2, "11b"),
        ("webhook_retry_cmds", 3, "11c"),
        ("durable_cmds", 8, "12a"),  # more than WAITAOF on top of the default enqueue
        ("durable_trips", 2, "12b"),
        ("pack_s", 15.1, "13a"),  # issue 13: 1,000 queued emails at 2 req/s in at most 15 s
        ("pack_cmds", 1.6, "13b"),
        ("pack_429", 1, "13c"),
    ],
)
def test_a_figure_that_misses_its_target_fails_that_row_only(figure: str, value: float, key: str) -> None:
    verdicts = {row.key: row.passed for row in rows({**GOOD, figure: value}, QUICK)}
    assert [k for k, passed in verdicts.items() if not passed] == [key]
