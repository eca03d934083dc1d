"""Vercel's real builder, offline: install the CLI, build a project, run the built function.

Each step follows a fact written in docs/DEPLOY.md:

- Tools: npm's ``vercel`` (pinned, with the ``sandbox`` override it needs here), ``uv`` and a
  ``python3.12`` on PATH (docs/DEPLOY.md, "Building offline").
- ``vercel build`` reads ``.vercel/project.json``; ``VERCEL_FIRST_DEPLOYMENT=1`` makes it detect
  the framework as a first deployment does (docs/DEPLOY.md, "First deployment").
- The function is started the way Vercel's Python runtime starts it: its handler module, with
  ``VERCEL_IPC_PATH`` naming a Unix socket on which it announces its port and init duration
  (docs/DEPLOY.md, "How the function starts").
- Requests reach the function through the routes of ``.vercel/output/config.json``; in a
  backend-framework build an internal rewrite hands the app the rewritten path
  (docs/DEPLOY.md, "Routing").
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = ROOT / ".deploy-tools"
VERCEL_VERSION = "64.0.2"
UV_VERSION = "0.10.11"
#: npm cannot install vercel 64.0.2 here without it: its dependency asks for sandbox@4.4.0,
#: which the registry does not have (docs/DEPLOY.md, "Building offline").
NPM_OVERRIDES = {"sandbox": "4.5.0"}
BUILD_TIMEOUT_S = 600
START_TIMEOUT_S = 60

#: The two ways a project meets the builder (docs/DEPLOY.md, "First deployment"):
#: a first deployment, where the CLI detects the framework itself, and a project whose settings
#: say explicitly "no framework" (the dashboard's "Other"), the setting that once published the
#: whole repository as static files.
MODES: dict[str, dict[str, Any]] = {
    "first-deployment": {"settings": {}, "env": {"VERCEL_FIRST_DEPLOYMENT": "1"}},
    "explicit-other": {"settings": {"framework": None}, "env": {}},
}


class ToolMissing(Exception):
    """A tool the deploy tier needs is absent; the message says which and how to get it."""


@dataclass
class Tools:
    vercel: Path
    uv: Path
    python312: Path
    node_bin: Path

    def path(self) -> str:
        dirs = [self.python312.parent, self.uv.parent, self.vercel.parent, self.node_bin]
        return os.pathsep.join([*(str(d) for d in dirs), os.environ.get("PATH", "")])


def find_python312() -> Path:
    found = shutil.which("python3.12")
    if found:
        return Path(found)
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in sorted(glob.glob(str(pyenv_root / "versions" / "3.12.*" / "bin" / "python3.12"))):
        return Path(candidate)
    raise ToolMissing(
        "no python3.12 on PATH or under pyenv: Vercel builds with Python 3.12 and uv cannot "
        "download an interpreter here; install one (e.g. `pyenv install 3.12`)"
    )


def find_uv() -> Path:
    candidates = [Path(sys.executable).parent / "uv", shutil.which("uv")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            out = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, check=False)
            if out.stdout.split()[1:2] == [UV_VERSION]:
                return Path(candidate)
    raise ToolMissing(
        f"uv {UV_VERSION} (the version Vercel's Python builder uses) is not installed: "
        f"`pip install --group dev` installs it, or `pip install uv=={UV_VERSION}`"
    )


def install_vercel_cli(node: str) -> Path:
    """``npm install vercel@VERCEL_VERSION`` into .deploy-tools/ (kept between runs)."""
    npm_dir = TOOLS_DIR / "npm"
    cli = npm_dir / "node_modules" / ".bin" / "vercel"
    package = {
        "private": True,
        "dependencies": {"vercel": VERCEL_VERSION},
        "overrides": NPM_OVERRIDES,
    }
    wanted = json.dumps(package, indent=2, sort_keys=True)
    manifest = npm_dir / "package.json"
    installed = npm_dir / "node_modules" / "vercel" / "package.json"
    up_to_date = cli.exists() and manifest.exists() and manifest.read_text() == wanted
    if up_to_date and installed.exists() and json.loads(installed.read_text())["version"] == VERCEL_VERSION:
        return cli
    npm = shutil.which("npm")
    if npm is None:
        raise ToolMissing(f"node is at {node} but npm is not on PATH; install npm")
    npm_dir.mkdir(parents=True, exist_ok=True)
    manifest.write_text(wanted)
    proc = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=npm_dir,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0 or not cli.exists():
        raise RuntimeError(f"npm install vercel@{VERCEL_VERSION} failed:\n{proc.stdout}\n{proc.stderr}")
    return cli


def find_tools() -> Tools:
    node = shutil.which("node")
    if node is None:
        raise ToolMissing(
            "`node` is not on PATH, so Vercel's CLI cannot run: install Node.js 18 or newer "
            "(npm fetches the CLI itself, into .deploy-tools/)"
        )
    python312 = find_python312()
    uv = find_uv()
    return Tools(vercel=install_vercel_cli(node), uv=uv, python312=python312, node_bin=Path(node).parent)


# --- building ---------------------------------------------------------------------------------


@dataclass
class Build:
    """What ``vercel build`` left in ``.vercel/output``."""

    project: str
    mode: str
    source: Path
    output: Path
    log: str
    config: dict[str, Any]
    builds: dict[str, Any]
    functions: dict[str, dict[str, Any]]  # "/fastapi" -> its .vc-config.json
    static_files: list[str]

    @property
    def framework_function(self) -> bool:
        """A backend-framework build (the FastAPI preset), as opposed to one function per api/ file."""
        detected = self.builds.get("detectedFramework") or {}
        return any(b.get("config", {}).get("framework") for b in self.builds.get("builds", [])) or bool(
            detected.get("slug")
        )

    def function_config(self, name: str) -> dict[str, Any]:
        return self.functions[name]


def copy_project(source: Path, dest: Path) -> None:
    """The files git tracks (or would track) under ``source``: what a deploy starts from."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z", "."],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = Path(raw.decode())
        src = source / rel
        if not src.is_file():
            continue  # deleted in the work tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


#: Variables of the test run that must not leak into a build: the test's own virtualenv and
#: Python settings, and anything the app would read as configuration.
_NOT_INHERITED = (
    "VIRTUAL_ENV",
    "PYTHON",
    "PYTEST",
    "VERCEL",
    "EMAILQUEUE",
    "QUEUE_",
    "RESEND",
    "CRON",
    "EMAIL_",
)


def build_environment() -> dict[str, str]:
    """The caller's environment (proxies, CA bundles, HOME) minus what a build must not see."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}


def run_build(tools: Tools, project: str, source: Path, mode: str, workdir: Path) -> Build:
    """Copy ``source`` to ``workdir`` and run ``vercel build`` there in ``mode``."""
    (workdir / ".vercel").mkdir(parents=True)
    settings = MODES[mode]["settings"]
    (workdir / ".vercel" / "project.json").write_text(
        json.dumps(
            {"projectId": "prj_emailqueue_test", "orgId": "team_emailqueue_test", "settings": settings}
        )
    )
    env = {
        **build_environment(),
        "PATH": tools.path(),
        "VERCEL_TELEMETRY_DISABLED": "1",
        "NO_COLOR": "1",
        **MODES[mode]["env"],
    }
    proc = subprocess.run(
        [str(tools.vercel), "build", "--yes"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"vercel build of {project} ({mode}) failed:\n{log}")
    output = workdir / ".vercel" / "output"
    functions: dict[str, dict[str, Any]] = {}
    for vc_config in (output / "functions").rglob(".vc-config.json"):
        func_dir = vc_config.parent
        name = "/" + func_dir.relative_to(output / "functions").as_posix().removesuffix(".func")
        functions[name] = json.loads(vc_config.read_text()) | {"_dir": str(func_dir)}
    static_dir = output / "static"
    static_files = (
        sorted(p.relative_to(static_dir).as_posix() for p in static_dir.rglob("*") if p.is_file())
        if static_dir.exists()
        else []
    )
    return Build(
        project=project,
        mode=mode,
        source=workdir,
        output=output,
        log=log,
        config=json.loads((output / "config.json").read_text()),
        builds=json.loads((output / "builds.json").read_text()),
        functions=functions,
        static_files=static_files,
    )


def bundle_files(build: Build, name: str) -> dict[str, Path]:
    """Bundle path -> file on disk: what Vercel would upload as the function."""
    config = build.function_config(name)
    func_dir = Path(config["_dir"])
    files = {rel: build.source / src for rel, src in config.get("filePathMap", {}).items()}
    for path in func_dir.rglob("*"):
        if path.is_file() and path.name != ".vc-config.json":
            files[path.relative_to(func_dir).as_posix()] = path
    return files


def materialize(build: Build, name: str, dest: Path) -> float:
    """Lay the function's bundle out in ``dest`` (as in /var/task); return its size in MB."""
    total = 0
    for rel, src in bundle_files(build, name).items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        total += target.stat().st_size
    return total / 1e6


# --- routing ----------------------------------------------------------------------------------


def _substitute(template: str, match: re.Match[str]) -> str:
    return re.sub(r"\$(\d+)", lambda m: match.group(int(m.group(1))) or "", template)


def resolve(build: Build, path: str) -> tuple[str | None, str]:
    """Which function a request for ``path`` reaches, and the path its app sees.

    A small model of Vercel's routing of the routes in ``config.json`` (the forms the Python
    builders emit): routes before the "error" / "miss" / "hit" phases apply in order; a
    destination that is a function ends the walk; any other destination is an internal rewrite
    that later routes match against. Static files win at the "filesystem" phase.
    """
    phase: str | None = None
    current = path
    for route in build.config["routes"]:
        if "handle" in route:
            phase = route["handle"]
            if phase == "filesystem" and current.lstrip("/") in build.static_files:
                return "static", current
            continue
        if phase in ("error", "miss", "hit"):
            continue  # these apply only after a miss or an error
        match = re.fullmatch(route["src"], current)
        if match is None:
            continue
        if "dest" not in route:
            if "status" in route:
                return None, current
            continue
        dest = _substitute(route["dest"], match).split("?")[0]
        seen: str | None = None
        for transform in route.get("transforms", []):
            if transform.get("type") == "request.path" and transform.get("op") == "set":
                seen = _substitute(transform["args"], match)
        if dest in build.functions:
            if seen is None:
                # A framework function is handed the rewritten path; a per-file function
                # the path the client asked for.
                seen = current if build.framework_function else path
            return dest, seen
        current = dest
    return None, current


# --- running ----------------------------------------------------------------------------------


@dataclass
class RunningFunction:
    process: subprocess.Popen[bytes]
    port: int
    init_duration_ms: int
    messages: list[dict[str, Any]] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)


def _read_messages(conn: socket.socket, sink: list[dict[str, Any]], first: threading.Event) -> None:
    buffer = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        while b"\0" in buffer:
            raw, buffer = buffer.split(b"\0", 1)
            sink.append(json.loads(raw))
            first.set()


@contextmanager
def start_function(
    build: Build, name: str, task_dir: Path, python312: Path, env: Mapping[str, str]
) -> Iterator[RunningFunction]:
    """Run the built function as Vercel's runtime does: import its handler module in
    ``task_dir`` with ``VERCEL_IPC_PATH`` set, wait for ``server-started`` on that socket."""
    config = build.function_config(name)
    handler_module = config["handler"].split(".")[0]
    ipc_path = task_dir.parent / f"ipc-{os.getpid()}-{time.monotonic_ns()}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(ipc_path))
    server.listen(1)
    server.settimeout(START_TIMEOUT_S)
    proc_env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(task_dir.parent),
        "TZ": "UTC",
        **config.get("environment", {}),
        **env,
        "VERCEL_IPC_PATH": str(ipc_path),
    }
    log_path = task_dir.parent / "function.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(python312), "-c", f"import {handler_module}"],
            cwd=task_dir,
            env=proc_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    messages: list[dict[str, Any]] = []
    first = threading.Event()
    conn: socket.socket | None = None
    try:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            process.kill()
            process.wait()
            out = log_path.read_text(errors="replace")
            raise AssertionError(f"the function never connected to VERCEL_IPC_PATH:\n{out}") from None
        threading.Thread(target=_read_messages, args=(conn, messages, first), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        started: dict[str, Any] | None = None
        while started is None:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                out = log_path.read_text(errors="replace")
                raise AssertionError(f"the function did not start: {messages}\n{out}")
            first.wait(0.05)
            started = next((m for m in messages if m.get("type") == "server-started"), None)
        payload = started["payload"]
        yield RunningFunction(process, int(payload["httpPort"]), int(payload["initDuration"]), messages)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if conn is not None:
            conn.close()
        server.close()
        ipc_path.unlink(missing_ok=True)
