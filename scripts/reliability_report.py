"""Regenerate docs/RELIABILITY.md from a measured run of the fault and load suite.

    python scripts/reliability_report.py            # runs tests/reliability, writes the doc
    python scripts/reliability_report.py --from results.jsonl   # render rows already measured

Every number in the table comes from the suite's own ledger (tests/reliability/ledger.py), which
appends one JSON line per scenario run to ``$EMAILQUEUE_RELIABILITY_RESULTS``. Nothing is typed
by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RELIABILITY.md"
TEMPLATE = ROOT / "docs" / "RELIABILITY.template.md"


def run_suite(results: Path) -> int:
    env = {**os.environ, "EMAILQUEUE_RELIABILITY_RESULTS": str(results)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/reliability",
        # scenarios e (managed Redis) and f (TLS) live with the security suite
        "tests/security/test_managed_redis.py::test_the_whole_pipeline_runs_as_a_restricted_user",
        "tests/security/test_tls.py::test_send_drain_status_and_the_api_work_with_queue_redis_ca_cert",
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> str:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["scenario"]].append(row)
    lines = [
        "| scenario | runs | enqueued | accepted | duplicates suppressed | failed (why) | lost | duplicated "
        "| stuck |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in sorted(groups):
        runs = groups[scenario]
        reasons: dict[str, int] = defaultdict(int)
        for run in runs:
            for name, n in run.get("failed_reasons", {}).items():
                reasons[name] += n
        why = ", ".join(f"{name} x{n}" for name, n in sorted(reasons.items()))
        total = {
            k: sum(int(r.get(k, 0)) for r in runs)
            for k in ("enqueued", "accepted", "replays", "failed", "lost", "duplicated", "stuck")
        }
        lines.append(
            f"| {scenario} | {len(runs)} | {total['enqueued']} | {total['accepted']} | {total['replays']} | "
            f"{total['failed']}{f' ({why})' if why else ''} | {total['lost']} | {total['duplicated']} | "
            f"{total['stuck']} |"
        )
    return "\n".join(lines)


def render(rows: list[dict[str, Any]]) -> str:
    measured = max((r.get("recorded_at", "") for r in rows), default="")
    python = platform.python_version()
    where = f"{platform.system()} {platform.machine()}, Python {python}, {os.cpu_count()} cores"
    header = (
        f"Measured {measured} on {where} by `python scripts/reliability_report.py`, which runs "
        "`pytest tests/reliability` (and scenarios e and f from tests/security) and renders this table from "
        "the suite's ledger.\n\n"
    )
    return TEMPLATE.read_text(encoding="utf-8").replace("{{TABLE}}", header + table(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="render measured rows instead of running")
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    code = 0
    if args.source is None:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results.jsonl"
            results.touch()
            code = run_suite(results)
            rows = load(results)
    else:
        rows = load(args.source)
    if not rows:
        print("no scenario rows were recorded", file=sys.stderr)
        return 1
    args.out.write_text(render(rows), encoding="utf-8")
    print(f"wrote {args.out} ({len(rows)} scenario runs){' - the suite FAILED' if code else ''}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
