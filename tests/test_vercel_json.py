"""vercel.json and what else Vercel's builder reads: the shape that builds the same whether or
not Vercel detects a framework, and agreement with the app, the settings and .vercelignore.

The deploy tier (tests/deploy/) builds these files with Vercel's real CLI; this file checks
them without node, in milliseconds. Facts are in docs/DEPLOY.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from emailqueue import Settings
from tests.helpers import vercel_build as vb

ROOT = Path(__file__).resolve().parents[1]
CONFIG: dict[str, Any] = json.loads((ROOT / "vercel.json").read_text())
PROJECTS = [ROOT, *sorted(p.parent for p in (ROOT / "examples").glob("*/vercel.json"))]


def app() -> FastAPI:
    from api.index import app

    return app


def routes(application: FastAPI) -> dict[str, set[str]]:
    """Path -> methods of every route the app serves (from its OpenAPI schema, built on demand)."""
    return {path: {m.upper() for m in ops} for path, ops in application.openapi()["paths"].items()}


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.relative_to(ROOT).as_posix() or "emailqueue")
def test_the_framework_is_pinned_and_nothing_rewrites(project: Path) -> None:
    """Facts (docs/DEPLOY.md, First deployment; Routing; Static files): without a framework in
    vercel.json, a first deployment detects FastAPI and a project set to "Other" publishes the
    repository as static files; in the preset, a rewrite hands the app the rewritten path."""
    config = json.loads((project / "vercel.json").read_text())
    assert config["framework"] == "fastapi"
    for key in ("rewrites", "routes", "redirects", "builds"):
        assert key not in config, key
    assert list(config["functions"]) == ["api/index.py"]
    assert (project / "api" / "index.py").is_file()
    assert (project / ".python-version").read_text().strip() == "3.12"


def test_the_function_file_exports_an_asgi_app_named_app() -> None:
    assert isinstance(app(), FastAPI)


def test_max_duration_is_the_settings_default_and_the_budget_fits_under_it() -> None:
    max_duration = CONFIG["functions"]["api/index.py"]["maxDuration"]
    assert isinstance(max_duration, int) and 1 <= max_duration <= 300  # Hobby with Fluid: 300 s
    assert max_duration == Settings.model_fields["drain_max_duration_s"].default
    defaults = Settings(_env_file=None, drain_max_duration_s=max_duration, drain_time_budget_s=None)  # type: ignore[call-arg]
    assert defaults.time_budget_s <= max_duration - 10


@pytest.mark.parametrize("cron", CONFIG["crons"], ids=lambda c: c["path"])
def test_each_cron_path_is_a_get_route_of_the_app(cron: dict[str, str]) -> None:
    assert "GET" in routes(app()).get(cron["path"], set())  # Vercel Cron sends a GET
    assert len(cron["schedule"].split()) == 5


def test_the_example_serves_its_own_routes_and_emailqueues() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("acme_index", ROOT / "examples/fastapi-app/api/index.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    served = routes(module.app)
    assert served["/"] == {"GET"} and served["/api/signup"] == {"POST"}
    assert set(served) >= set(routes(app()))
    example = json.loads((ROOT / "examples/fastapi-app/vercel.json").read_text())
    assert example["crons"] == CONFIG["crons"]


def test_excluded_files_are_not_uploaded_either() -> None:
    """Fact (docs/DEPLOY.md, Bundle): `vercel build` bundles every project file that
    excludeFiles does not exclude (it does not read .vercelignore; a deploy's upload does)."""
    pattern = CONFIG["functions"]["api/index.py"]["excludeFiles"]
    match = re.fullmatch(r"\{([^}]+)\}/\*\*", pattern)
    assert match, pattern
    excluded = set(match.group(1).split(","))
    ignored = {line.strip() for line in (ROOT / ".vercelignore").read_text().splitlines() if line.strip()} - {
        ""
    }
    ignored = {line for line in ignored if not line.startswith("#")}
    assert excluded - {"emailqueue", "*.egg-info"} <= ignored
    # Everything the function needs is uploaded.
    for needed in ("api", "emailqueue", "pyproject.toml", "uv.lock", "README.md", ".python-version"):
        assert needed not in ignored
    assert len(pattern) <= 256  # the schema's limit


def test_no_other_file_under_api_becomes_a_function() -> None:
    """Vercel makes a function of every api/ file unless a path segment starts with _ or ."""
    functions = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "api").rglob("*.py")
        if not any(part.startswith(("_", ".")) for part in path.relative_to(ROOT / "api").parts)
    ]
    assert functions == ["api/index.py"]


# What `vercel build` wrote for the old vercel.json (an `/api/(.*)` -> `/api/index` rewrite) in
# the FastAPI preset: the model of Vercel's routing used by the deploy tier must reproduce the
# bug that config had, or the deploy tier could not catch it coming back.
OLD_PRESET_ROUTES = [
    {"handle": "filesystem"},
    {"src": "^/api(?:/(.*))$", "dest": "/api/index", "check": True},
    {"handle": "error"},
    {"status": 404, "src": "^(?!/api).*$", "dest": "/404.html"},
    {"handle": "rewrite"},
    {
        "src": "/(.*)",
        "dest": "/fastapi",
        "transforms": [{"type": "request.path", "op": "set", "args": "/$1"}],
    },
]
NEW_PRESET_ROUTES = [route for route in OLD_PRESET_ROUTES if route.get("dest") != "/api/index"]


def model(routes_: list[dict[str, Any]], functions: list[str], framework: bool) -> vb.Build:
    builds = {"builds": [{"config": {"framework": "fastapi"}}]} if framework else {"builds": [{"config": {}}]}
    return vb.Build(
        project="model",
        mode="model",
        source=ROOT,
        output=ROOT,
        log="",
        config={"routes": routes_},
        builds=builds,
        functions={name: {} for name in functions},
        static_files=["pyproject.toml"] if not framework else [],
    )


def test_the_routing_model_reproduces_the_old_rewrite_bug() -> None:
    """Fact (docs/DEPLOY.md, Routing): in a backend-framework build the app sees the rewritten
    path, so the old rewrite turned every route into /api/index (a 404)."""
    old = model(OLD_PRESET_ROUTES, ["/fastapi"], framework=True)
    assert vb.resolve(old, "/api/health") == ("/fastapi", "/api/index")
    assert vb.resolve(old, "/api/cron/process-email-queue") == ("/fastapi", "/api/index")
    new = model(NEW_PRESET_ROUTES, ["/fastapi"], framework=True)
    assert vb.resolve(new, "/api/health") == ("/fastapi", "/api/health")
    assert vb.resolve(new, "/") == ("/fastapi", "/")


def test_the_routing_model_serves_static_files_at_the_filesystem_phase() -> None:
    legacy = model(OLD_PRESET_ROUTES[:2], ["/api/index"], framework=False)
    assert vb.resolve(legacy, "/pyproject.toml") == ("static", "/pyproject.toml")
    # A per-file function is handed the path the client asked for.
    assert vb.resolve(legacy, "/api/health") == ("/api/index", "/api/health")
