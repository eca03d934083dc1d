"""vercel.json: the shape Vercel accepts, and agreement with the app and the settings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from emailqueue import Settings

ROOT = Path(__file__).resolve().parents[1]
CONFIG: dict[str, Any] = json.loads((ROOT / "vercel.json").read_text())


def app() -> FastAPI:
    from api.index import app

    return app


def routes() -> dict[str, set[str]]:
    """Path -> methods of every route the app serves (from its OpenAPI schema, built on demand:
    the app publishes none)."""
    return {path: {m.upper() for m in ops} for path, ops in app().openapi()["paths"].items()}


def test_documented_shape() -> None:
    assert set(CONFIG) == {"functions", "crons", "rewrites"}
    # Vercel refuses a config that has both `builds` and `functions`.
    assert "builds" not in CONFIG and "routes" not in CONFIG
    assert CONFIG["functions"] == {"api/index.py": {"maxDuration": 60}}
    assert CONFIG["crons"] == [{"path": "/api/cron/process-email-queue", "schedule": "* * * * *"}]
    assert CONFIG["rewrites"] == [{"source": "/api/(.*)", "destination": "/api/index"}]


def test_the_function_file_exports_an_asgi_app_named_app() -> None:
    assert (ROOT / "api" / "index.py").is_file()
    assert isinstance(app(), FastAPI)


def test_max_duration_is_the_settings_default_and_the_budget_fits_under_it() -> None:
    max_duration = CONFIG["functions"]["api/index.py"]["maxDuration"]
    assert isinstance(max_duration, int) and 1 <= max_duration <= 800
    assert max_duration == Settings.model_fields["drain_max_duration_s"].default
    defaults = Settings(_env_file=None, drain_max_duration_s=max_duration, drain_time_budget_s=None)  # type: ignore[call-arg]
    assert defaults.time_budget_s <= max_duration - 10


@pytest.mark.parametrize("cron", CONFIG["crons"], ids=lambda c: c["path"])
def test_each_cron_path_is_a_get_route_of_the_app(cron: dict[str, str]) -> None:
    assert "GET" in routes().get(cron["path"], set())  # Vercel Cron sends a GET
    assert len(cron["schedule"].split()) == 5


def test_the_rewrite_sends_every_api_path_to_the_one_function() -> None:
    (rewrite,) = CONFIG["rewrites"]
    pattern = re.compile(rewrite["source"].replace("(.*)", "(?:.*)"))
    paths = list(routes())
    assert "/api/health" in paths
    for path in paths:
        assert path.startswith("/api/") and pattern.fullmatch(path), path
    assert rewrite["destination"] == "/" + next(iter(CONFIG["functions"])).removesuffix(".py")


def test_no_other_file_under_api_becomes_a_function() -> None:
    """Vercel makes a function of every api/ file unless a path segment starts with _ or ."""
    functions = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "api").rglob("*.py")
        if not any(part.startswith(("_", ".")) for part in path.relative_to(ROOT / "api").parts)
    ]
    assert functions == ["api/index.py"]
