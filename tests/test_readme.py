"""The README is the front door: keep its quick start, configuration table and CI in step."""

from __future__ import annotations

import re
from pathlib import Path

from emailqueue import Settings
from emailqueue._settings import REDIS_URL_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUN = 'pip install -e ".[dev]" && emailqueue dev'
TEST = 'pip install -e ".[dev]" --group dev && pytest'


def test_quick_start_is_exactly_the_two_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("##", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1).strip().splitlines() == [RUN, TEST]


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
