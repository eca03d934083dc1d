"""The state file ``emailqueue dev`` leaves in the project directory while it runs.

Anything started in the same directory (the library, ``emailqueue send``/``status``, the
connection check) finds the embedded Redis through it with no configuration. It is only read
when no Redis URL is configured, and never in production.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_DIR = Path(".emailqueue")
STATE_FILE = STATE_DIR / "dev.json"


def write_state(redis_url: str, *, pid: int | None = None, directory: Path = STATE_DIR) -> Path:
    """Record the dev server's Redis URL (it has no password: it listens on 127.0.0.1 only)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE.name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"redis_url": redis_url, "pid": pid or os.getpid()}), encoding="utf-8")
    os.replace(tmp, path)
    return path


def clear_state(directory: Path = STATE_DIR) -> None:
    (directory / STATE_FILE.name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(directory: Path = STATE_DIR) -> str | None:
    """The Redis URL of a running ``emailqueue dev`` in this directory, if there is one."""
    try:
        state = json.loads((directory / STATE_FILE.name).read_text(encoding="utf-8"))
        url, pid = str(state["redis_url"]), int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if _alive(pid) else None
