"""Measure what a crash of the Redis host loses, per fsync policy, with and without durable=True.

    python scripts/measure_crash_loss.py [--runs 5] [--seconds 3]

Each run: a fresh valkey-server with ``appendonly yes`` and the policy, single ``send_email``
calls back to back for ``--seconds``, then one ``send_event_email`` to 300 recipients, then the
simulated host crash of tests/reliability/crash.py (every AOF file cut back to its last completed
fsync) and a restart. Prints a markdown table of medians and maxima over the runs: acknowledged
calls, those lost, fan-out recipients lost, and the window from the last fsync to the crash.
Needs a C compiler (cc). Rows whose configuration durable=True refuses say so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emailqueue import ConfigurationError, Settings
from tests.reliability.crash import build_shim, simulate

CONFIGS = [
    ("no", False, False, "default"),
    ("everysec", False, False, "default"),
    ("everysec", False, True, "default + WAITAOF 1 0 after each call"),
    ("everysec", True, False, "durable=True"),
    ("always", False, False, "default"),
    ("always", True, False, "durable=True"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    shim = build_shim(Path(tempfile.mkdtemp(prefix="emailqueue-shim-")))
    settings = Settings(_env_file=None, email_from="App <app@example.com>", resend_rate_limit=0)  # type: ignore[call-arg]
    print(f"{args.runs} runs of {args.seconds:g} s of single sends + one 300-recipient fan-out each\n")
    print(
        "| appendfsync | enqueue | calls/s | acknowledged singles | lost (median / max) "
        "| fan-out recipients lost (median / max) | last fsync before the crash, ms (median / max) |"
    )
    print("|---|---|---|---|---|---|---|")
    for policy, durable, waitaof, label in CONFIGS:
        try:
            runs = [
                simulate(shim, settings, policy=policy, durable=durable, waitaof=waitaof,
                         duration_s=args.seconds, fanout=300)
                for _ in range(args.runs)
            ]  # fmt: skip
        except ConfigurationError:
            print(f"| {policy} | {label} | refused (ConfigurationError, nothing written) | | | | |")
            continue

        def med_max(values: list[float], fmt: str = "{:.0f}") -> str:
            return f"{fmt.format(statistics.median(values))} / {fmt.format(max(values))}"

        print(
            f"| {policy} | {label} | {statistics.median(r.calls_per_s for r in runs):.0f} "
            f"| {statistics.median(r.acknowledged for r in runs):.0f} "
            f"| {med_max([r.lost for r in runs])} | {med_max([r.fanout_lost for r in runs])} "
            f"| {med_max([r.window_ms for r in runs])} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
