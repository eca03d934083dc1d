"""Vercel's own CLI builds this repo and each example in both modes, and the built function
answers every route. Facts are in docs/DEPLOY.md; each test names the ones it relies on."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
import redis

from emailqueue import Settings, send_email
from emailqueue.testing import FakeResend
from tests.deploy.conftest import MEASUREMENTS, PROJECTS, Measurement, dev_only_distributions
from tests.helpers import vercel_build as vb

# Builds and the one-time npm install run in fixture setup, which the per-test timeout counts.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

CRON_SECRET = "deploy-cron-secret-0123456789"
ADMIN_TOKEN = "deploy-admin-token-9876543210"
SOURCE_PATHS = ["/pyproject.toml", "/uv.lock", "/emailqueue/_settings.py", "/tests/conftest.py", "/.ci/run"]


def project_config(build: vb.Build) -> dict[str, object]:
    data: dict[str, object] = json.loads((PROJECTS[build.project] / "vercel.json").read_text())
    return data


def only_function(build: vb.Build) -> str:
    assert len(build.functions) == 1, f"expected one function, got {sorted(build.functions)}"
    return next(iter(build.functions))


def test_the_fastapi_preset_builds_one_function_with_the_configured_max_duration(build: vb.Build) -> None:
    """Fact (docs/DEPLOY.md, First deployment; Functions): whatever the project settings say,
    `"framework": "fastapi"` in vercel.json selects the FastAPI preset, whose one function
    takes `maxDuration` from `functions["api/index.py"]`; Python 3.12 is the default runtime."""
    name = only_function(build)
    assert name == "/fastapi", build.log
    assert build.framework_function
    config = build.function_config(name)
    functions = project_config(build)["functions"]
    assert isinstance(functions, dict)
    assert config["maxDuration"] == functions["api/index.py"]["maxDuration"]
    assert config["runtime"] == "python3.12"
    assert config["environment"]["PYTHONPATH"] == "_vendor"


def test_nothing_is_published_as_static(build: vb.Build) -> None:
    """Fact (docs/DEPLOY.md, Static files): with no framework, every file outside api/ is
    published at the site root; the preset publishes only public/, which no project here has."""
    assert build.static_files == []
    for path in SOURCE_PATHS:
        assert vb.resolve(build, path)[0] != "static", path


def test_the_bundle_holds_the_app_and_no_dev_only_package(build: vb.Build) -> None:
    """Fact (docs/DEPLOY.md, Dependencies; Bundle): the builder installs the project's
    dependencies without dev groups or extras and bundles them under _vendor/; excludeFiles
    keeps the repository's other files out."""
    files = vb.bundle_files(build, only_function(build))
    assert "api/index.py" in files and "vc__handler__python.py" in files
    installed = {
        re.sub(r"[-_.]+", "_", p.split("/")[1].split("-")[0]).lower()
        for p in files
        if p.startswith("_vendor/") and p.split("/")[1].endswith(".dist-info")
    }
    assert {"emailqueue", "fastapi", "rq", "redis", "httpx", "vercel_runtime"} <= installed
    leaked = installed & dev_only_distributions()
    assert not leaked, f"dev-only packages in the bundle: {sorted(leaked)}"
    strays = sorted(
        p
        for p in files
        if p.split("/")[0] in {"tests", ".ci", "bench", "scripts", "docs", "build", "examples"}
    )
    assert strays == []


def test_this_repo_installs_from_its_lock(build: vb.Build) -> None:
    """Fact (docs/DEPLOY.md, Dependencies): with a uv.lock next to pyproject.toml the builder
    installs exactly the lock (`uv sync --frozen`), and resolves nothing itself."""
    if build.project != "emailqueue":
        assert "Installing required dependencies from pyproject.toml" in build.log
        return
    assert "Installing required dependencies from uv.lock" in build.log, build.log
    lock = (build.source / "uv.lock").read_text()
    for dist in ("fastapi", "rq", "redis", "httpx"):
        version = re.search(rf'name = "{dist}"\nversion = "([^"]+)"', lock)
        assert version, dist
        files = vb.bundle_files(build, only_function(build))
        assert f"_vendor/{dist}-{version.group(1)}.dist-info/METADATA" in files


def _enqueue(conn: redis.Redis, settings: Settings, to: str, n: int) -> list[str]:
    return [
        send_email(
            from_="App <app@example.com>",
            to=to,
            subject=f"deploy {i}",
            text="hello",
            connection=conn,
            settings=settings,
        )
        for i in range(n)
    ]


def test_every_route_answers_on_its_own_path(
    build: vb.Build,
    tools: vb.Tools,
    task_dir: Path,
    redis_url: str,
    real_conn: redis.Redis,
    fake_resend: FakeResend,
    settings: Settings,
) -> None:
    """Facts (docs/DEPLOY.md, Routing; How the function starts; Cron): each request reaches the
    one function with its own path (no rewrite hands it /api/index), Vercel Cron's GET with
    `Bearer $CRON_SECRET` runs the drain, and the queued emails reach Resend exactly once."""
    name = only_function(build)
    bundle_mb = vb.materialize(build, name, task_dir)
    env = {
        "QUEUE_REDIS_URL": redis_url,
        "RESEND_API_KEY": fake_resend.api_key,
        "RESEND_API_URL": fake_resend.url,
        "RESEND_RATE_LIMIT": "0",
        "EMAIL_FROM": "App <app@example.com>",
        "CRON_SECRET": CRON_SECRET,
        "QUEUE_ADMIN_TOKEN": ADMIN_TOKEN,
        "VERCEL_ENV": "production",
    }
    crons = project_config(build)["crons"]
    assert isinstance(crons, list) and len(crons) == 1
    cron_path = crons[0]["path"]
    checked: list[str] = []

    with (
        vb.start_function(build, name, task_dir, tools.python312, env) as function,
        function.client() as http,
    ):

        def call(method: str, path: str, token: str | None = None, **kwargs: object) -> httpx.Response:
            target, seen = vb.resolve(build, path)
            assert (target, seen) == (name, path), f"{path} reaches {target} as {seen}"
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            if path == cron_path:
                headers["user-agent"] = "vercel-cron/1.0"
            response = http.request(method, seen, headers=headers, **kwargs)  # type: ignore[arg-type]
            checked.append(f"{method} {path} {response.status_code}")
            return response

        health = call("GET", "/api/health")
        assert health.status_code == 200 and health.json()["ok"] is True

        assert call("GET", cron_path).status_code == 401
        assert call("GET", cron_path, token="wrong-secret").status_code == 401

        queued = _enqueue(real_conn, settings, "ada@example.com", 3)
        if build.project != "emailqueue":
            # The example's own routes, alongside emailqueue's.
            home = call("GET", "/")
            assert home.status_code == 200 and home.json()["app"] == "acme"
            signup = call("POST", "/api/signup", json={"email": "grace@example.com"})
            assert signup.status_code == 202, signup.text
            queued.append(signup.json()["queued"])
            assert call("POST", "/api/signup", json={"email": "not-an-address"}).status_code == 422

        first = call("GET", cron_path, token=CRON_SECRET)
        assert first.status_code == 200, first.text
        assert first.json()["sent"] == len(queued)
        again = call("GET", cron_path, token=CRON_SECRET)
        assert again.status_code == 200 and again.json()["sent"] == 0
        counts = fake_resend.accepted_count_by_key()
        assert len(fake_resend.accepted) == len(queued) and set(counts.values()) == {1}
        # EMAIL_PACK defaults on: the queued single emails went out in one batch request.
        assert len(counts) == 1 and next(iter(counts)).startswith("emailqueue-pack-"), counts

        assert call("GET", "/api/admin/queue-status").status_code == 401
        status = call("GET", "/api/admin/queue-status", token=ADMIN_TOKEN)
        assert status.status_code == 200 and status.json()["queued"] == 0, status.text

    # More cold starts of the same bundle, for a steadier init figure (DEPLOY_INIT_STARTS=7).
    inits = [function.init_duration_ms]
    for _ in range(int(os.environ.get("DEPLOY_INIT_STARTS", "1")) - 1):
        with vb.start_function(build, name, task_dir, tools.python312, env) as again_started:
            inits.append(again_started.init_duration_ms)
    MEASUREMENTS.append(Measurement(build.project, build.mode, round(bundle_mb, 1), inits, checked))


@pytest.mark.parametrize("path", SOURCE_PATHS)
def test_a_source_path_is_not_served(build: vb.Build, path: str) -> None:
    """Fact (docs/DEPLOY.md, Routing): in the preset every unmatched path reaches the app,
    which answers 404 for a source file's path instead of the file."""
    target, seen = vb.resolve(build, path)
    assert target == only_function(build) and seen == path
