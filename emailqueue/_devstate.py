"""The state file ``emailqueue dev`` leaves in the project while it runs.

Anything started in the project, from its root or any subdirectory (the library, every
``emailqueue`` command, the connection check), finds the dev server through it, the way git
finds its repository: walk up from the current directory to the project's root. The settings
read it last, after the environment and ``.env`` (see :mod:`emailqueue._settings`); it is never
read in production.

The same walk finds the project's ``.env`` from a subdirectory that has none of its own.

The project's root is the nearest directory, from the current one upwards, that holds a
``.emailqueue/`` directory or a project marker (``.git``, ``pyproject.toml``, ``setup.py``,
``.env``); failing both, the current directory. The walk stops at a marker, so a directory
outside this project (a home directory that once ran ``emailqueue dev``, say) is never used.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_DIR_NAME = ".emailqueue"
STATE_FILE_NAME = "dev.json"
PROJECT_MARKERS = (".git", "pyproject.toml", "setup.py", ".env")
#: The sender dev mode uses when none is configured: Resend accepts it from any account
#: (to your own address), and the outbox shows it as is.
DEV_SENDER = "emailqueue dev <onboarding@resend.dev>"


@dataclass(frozen=True)
class DevState:
    """What a running ``emailqueue dev`` tells the rest of the project."""

    redis_url: str
    pid: int
    project: str
    outbox_dir: str
    email_from: str = DEV_SENDER


def project_dir(start: Path | None = None) -> Path:
    """The project's root directory, found from ``start`` (default: the current directory)."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / STATE_DIR_NAME).is_dir():
            return directory
        if any((directory / marker).exists() for marker in PROJECT_MARKERS):
            return directory
    return here


def env_file(start: Path | None = None) -> Path:
    """The ``.env`` the settings read: the current directory's, else the project root's."""
    here = start or Path.cwd()
    return here / ".env" if (here / ".env").is_file() else project_dir(here) / ".env"


def state_dir(start: Path | None = None) -> Path:
    """The project's ``.emailqueue`` directory (it may not exist yet)."""
    return project_dir(start) / STATE_DIR_NAME


def write_state(state: DevState, directory: Path) -> Path:
    """Record a running dev server (its Redis has no password: it listens on 127.0.0.1 only)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state)), encoding="utf-8")
    os.replace(tmp, path)
    return path


def clear_state(directory: Path) -> None:
    """Remove the state file, if it is there."""
    (directory / STATE_FILE_NAME).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(directory: Path) -> DevState | None:
    """The state in ``directory`` if its dev server still runs; a stale file counts as none."""
    try:
        raw = json.loads((directory / STATE_FILE_NAME).read_text(encoding="utf-8"))
        state = DevState(
            redis_url=str(raw["redis_url"]),
            pid=int(raw["pid"]),
            project=str(raw.get("project") or directory.parent),
            outbox_dir=str(raw.get("outbox_dir") or directory / "outbox"),
            email_from=str(raw.get("email_from") or DEV_SENDER),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if pid_alive(state.pid) else None


def find_state(start: Path | None = None) -> DevState | None:
    """The running ``emailqueue dev`` of the project around ``start`` (default: here), if any."""
    return read_state(state_dir(start))
