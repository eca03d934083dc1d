"""The README is the front door: its examples run, and its quick start, configuration table and
CI stay in step with the code.

`test_every_readme_block_runs_against_emailqueue_dev` runs every ```python, ```bash and ```sh
block of README.md verbatim, in a fresh directory next to a running `emailqueue dev`, as a new
user would paste them. A block preceded by the line `<!-- readme-test: skip -- <reason> -->` is
not run; every other block must exit 0.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from emailqueue import Settings
from emailqueue._settings import REDIS_URL_VARIABLES
from tests.helpers.devproc import clean_env, running_dev, wait_for

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUN = 'pip install -e ".[dev]" && emailqueue dev'
TEST = 'pip install -e ".[dev]" --group dev && pytest'
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
SKIP_MARKER = re.compile(r"^\s*<!-- readme-test: skip -- (?P<reason>\S.*?) -->\s*$")
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the marker's reason

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def readme_blocks(text: str = README) -> list[Block]:
    """Every fenced block with its language, and the skip reason of the line before it, if any."""
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = [ln for ln in text[: match.start()].splitlines() if ln.strip()]
        marker = SKIP_MARKER.match(before[-1]) if before else None
        code = textwrap.dedent(match.group("body"))
        blocks.append(
            Block(line, match.group("lang").lower(), code, marker.group("reason") if marker else None)
        )
    return blocks


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = (
        [sys.executable, "-c", block.code]
        if RUNNABLE[block.lang] == "python"
        else ["bash", "-e", "-c", block.code]
    )
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


@pytest.mark.timeout(900)
def test_every_readme_block_runs_against_emailqueue_dev(tmp_path: Path) -> None:
    blocks = [b for b in readme_blocks() if b.lang in RUNNABLE]
    to_run = [b for b in blocks if b.skip is None]
    project = tmp_path / "myapp"
    project.mkdir()
    env = clean_env()
    failures, ran = [], 0
    with running_dev(project, env=env) as dev:
        for block in to_run:
            done = run_block(block, project, env)
            ran += 1
            if done.returncode != 0:
                output = done.stdout + done.stderr
                failures.append(f"{block} exited {done.returncode}:\n{block.code}\n--- output:\n{output}")
        outbox = project / ".emailqueue" / "outbox"
        # The examples' mail really arrives: dev's worker writes it to the outbox.
        wait_for(lambda: list(outbox.glob("*.json")), 60, "the examples' emails in dev's outbox")
    print(f"README: ran {ran} block(s), skipped {len(blocks) - len(to_run)} (marked readme-test: skip)")
    assert not failures, "\n\n".join(failures) + f"\n\ndev's output:\n{dev.output[-3000:]}"
    assert ran == len(to_run) and ran >= 3, f"only {ran} README block(s) ran"


def test_block_extraction_honours_the_skip_marker() -> None:
    text = (
        "intro\n\n<!-- readme-test: skip -- needs a deploy -->\n```bash\nvercel deploy\n```\n\n"
        "```python\nprint(1)\n```\n\n1. step:\n\n   ```sh\n   echo indented\n   ```\n\n```json\n{}\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.lang, b.skip) for b in blocks] == [
        ("bash", "needs a deploy"),
        ("python", None),
        ("sh", None),
        ("json", None),
    ]
    assert blocks[2].code == "echo indented\n"


def test_a_failing_block_fails(tmp_path: Path) -> None:
    (bad,) = readme_blocks("```python\nraise SystemExit(3)\n```\n")
    assert run_block(bad, tmp_path, clean_env()).returncode == 3


def test_every_skip_marker_has_a_reason_and_a_block() -> None:
    lines = README.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("<!-- readme-test"):
            assert SKIP_MARKER.match(line), (
                f"README.md:{i + 1}: write it as <!-- readme-test: skip -- <reason> -->"
            )
            following = next(ln for ln in lines[i + 1 :] if ln.strip())
            assert following.strip().startswith("```"), f"README.md:{i + 1}: the marker must precede a block"


def test_quick_start_is_exactly_the_two_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1).strip().splitlines() == [RUN, TEST]


def test_readme_names_the_extras() -> None:
    assert "emailqueue[server]" in README and "emailqueue[embedded]" in README


def test_ci_runs_the_readme_test_command() -> None:
    assert TEST in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for name in Settings.model_fields:
        variable = "QUEUE_REDIS_URL" if name == "queue_redis_url" else name.upper()
        assert f"`{variable}`" in table, f"{variable} is missing from the README's configuration table"
    for variable in REDIS_URL_VARIABLES:
        assert variable in table


def test_documented_worker_command_is_the_one_the_cli_runs() -> None:
    assert 'rq worker --with-scheduler --serializer json --url "$QUEUE_REDIS_URL" emails' in README
