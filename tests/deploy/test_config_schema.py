"""Every vercel.json here passes the Vercel CLI's own config validation (the check `vercel build`
and `vercel deploy` run before anything else), and the validator is live: a broken copy fails."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import PROJECTS
from tests.helpers import vercel_build as vb

# Builds and the one-time npm install run in fixture setup, which the per-test timeout counts.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

SCRIPT = Path(__file__).with_name("validate_vercel_json.mjs")


def validate(tools: vb.Tools, *files: Path) -> list[str | None]:
    out = subprocess.run(
        [
            str(tools.node_bin / "node"),
            str(SCRIPT),
            str(tools.vercel.parent.parent / "vercel"),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    results: list[str | None] = json.loads(out.stdout)
    return results


@pytest.mark.parametrize("project", list(PROJECTS))
def test_vercel_json_is_valid(tools: vb.Tools, project: str) -> None:
    assert validate(tools, PROJECTS[project] / "vercel.json") == [None]


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [
        (lambda c: c["crons"][0].update(path="api/cron/process-email-queue"), "crons"),
        (lambda c: c["functions"]["api/index.py"].update(excludeFiles=["tests/**"]), "excludeFiles"),
        (lambda c: c.update(builds=[{"src": "api/index.py", "use": "@vercel/python"}]), "builds"),
    ],
    ids=["cron-path-without-slash", "excludeFiles-as-list", "functions-and-builds"],
)
def test_the_validator_rejects_a_broken_copy(
    tools: vb.Tools, tmp_path: Path, breakage, complaint: str
) -> None:  # type: ignore[no-untyped-def]
    config = json.loads((vb.ROOT / "vercel.json").read_text())
    breakage(config)
    broken = tmp_path / "vercel.json"
    broken.write_text(json.dumps(config))
    (message,) = validate(tools, broken)
    assert message is not None and complaint in message
