"""The deploy tier: Vercel's real CLI builds this repo and each example, offline, and the built
functions are started the way Vercel's runtime starts them (marker ``deploy``).

It needs ``node`` (npm installs the pinned CLI into ``.deploy-tools/``, kept between runs),
``uv`` 0.10.11 (in the ``dev`` dependency group) and a ``python3.12``. Where one is missing the
tier does not run, and says so at the end of the run in a banner; under ``CI=true`` a missing
tool fails the tier instead.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import vercel_build as vb

ROOT = vb.ROOT
EXAMPLES = sorted(p.parent for p in (ROOT / "examples").glob("*/vercel.json"))
PROJECTS = {"emailqueue": ROOT, **{f"examples/{p.name}": p for p in EXAMPLES}}
BUILDS = [(project, mode) for project in PROJECTS for mode in vb.MODES]

NOT_RUN: list[str] = []


@dataclass
class Measurement:
    project: str
    mode: str
    bundle_mb: float
    init_ms: list[int]  # initDuration of each cold start
    routes: list[str]


MEASUREMENTS: list[Measurement] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if NOT_RUN:
        reason = NOT_RUN[0]
        line = "!" * 100
        terminalreporter.write_line(line, red=True, bold=True)
        terminalreporter.write_line(f"DEPLOY TIER NOT RUN (tests/deploy): {reason}", red=True, bold=True)
        terminalreporter.write_line(
            "Nothing proved that Vercel's builder builds this repo or that its routes answer.",
            red=True,
            bold=True,
        )
        terminalreporter.write_line(line, red=True, bold=True)
    if MEASUREMENTS:
        terminalreporter.section("deploy tier: Vercel builds")
        for m in MEASUREMENTS:
            init = f"init {statistics.median(m.init_ms):6.0f} ms"
            if len(m.init_ms) > 1:
                init += f" (median of {len(m.init_ms)}, {min(m.init_ms)}-{max(m.init_ms)})"
            terminalreporter.write_line(f"{m.project:22} {m.mode:17} bundle {m.bundle_mb:5.1f} MB   {init}")
            terminalreporter.write_line(f"    routes: {', '.join(m.routes)}")


@pytest.fixture(scope="session")
def tools() -> vb.Tools:
    try:
        return vb.find_tools()
    except vb.ToolMissing as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"deploy tier cannot run under CI=true: {exc}", pytrace=False)
        NOT_RUN.append(str(exc))
        pytest.skip(f"DEPLOY TIER NOT RUN: {exc}")


@pytest.fixture(scope="session")
def emailqueue_wheel(tools: vb.Tools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the tree under test: what the example installs in place of the git URL."""
    source = tmp_path_factory.mktemp("emailqueue-src")
    vb.copy_project(ROOT, source)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [str(tools.uv), "build", "--wheel", "--out-dir", str(out), "--python", str(tools.python312)],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=vb.BUILD_TIMEOUT_S,
    )
    (wheel,) = out.glob("emailqueue-*.whl")
    return wheel


def install_emailqueue_from(pyproject: Path, wheel: Path) -> None:
    """Point the example's emailqueue requirement (a git URL) at ``wheel``.

    The example names emailqueue the way a user does, by its git URL; the tree under test is
    not at that URL, so the test installs a wheel of it instead, through the same manifest.
    """
    text = pyproject.read_text()
    new, count = re.subn(r'"emailqueue @ git\+[^"]+"', f'"emailqueue @ {wheel.as_uri()}"', text)
    assert count == 1, f"{pyproject}: expected one `emailqueue @ git+...` requirement"
    pyproject.write_text(new)


_BUILT: dict[tuple[str, str], vb.Build] = {}


@pytest.fixture(scope="session", params=BUILDS, ids=[f"{p}:{m}" for p, m in BUILDS])
def build(
    request: pytest.FixtureRequest, tools: vb.Tools, tmp_path_factory: pytest.TempPathFactory
) -> vb.Build:
    project, mode = request.param
    key = (project, mode)
    if key not in _BUILT:
        workdir = tmp_path_factory.mktemp(f"{project.replace('/', '-')}-{mode}") / "project"
        vb.copy_project(PROJECTS[project], workdir)
        if project != "emailqueue":
            install_emailqueue_from(workdir / "pyproject.toml", request.getfixturevalue("emailqueue_wheel"))
        _BUILT[key] = vb.run_build(tools, project, workdir, mode, workdir)
    return _BUILT[key]


def dev_only_distributions() -> set[str]:
    """Normalised names of what only development needs: the dev group and the local-dev extras."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [
        *data["dependency-groups"]["dev"],
        *data["project"]["optional-dependencies"]["embedded"],
        *data["project"]["optional-dependencies"]["server"],
    ]
    names = {re.split(r"[\s\[<>=!~;@]", r, maxsplit=1)[0] for r in requirements if isinstance(r, str)}
    return {re.sub(r"[-_.]+", "_", n).lower() for n in names}


@pytest.fixture
def task_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "task"
    path.mkdir()
    yield path
