"""Fixtures and helpers of the security suite (issue 5, part 2).

The two-tier ``conn`` fixture, ``settings``, ``fake_resend``, ``real_conn`` and ``redis_url`` come
from ``tests/conftest.py``. What is added here: subprocess environments that carry nothing of the
caller's settings, a TestClient factory on a fresh app, and a way to plant raw job hashes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.typing import EncodableT, FieldT

from emailqueue._constants import JOB_FUNC_PATH
from tests.helpers.api_client import (
    ADMIN_TOKEN,
    CRON,
    CRON_SECRET,
    HEALTH,
    REQUEUE,
    STATUS,
    MakeClient,
    TestClient,
    bearer,
    with_secrets,
)

#: Shared with tests/test_api.py through tests/helpers/api_client.py; re-exported for this suite.
__all__ = [
    "ADMIN_TOKEN",
    "CRON",
    "CRON_SECRET",
    "HEALTH",
    "REQUEUE",
    "STATUS",
    "MakeClient",
    "TestClient",
    "bearer",
    "with_secrets",
]

BIN = Path(sys.executable).parent
RQ = str(BIN / "rq")
EMAILQUEUE = str(BIN / "emailqueue")

# Every variable the package, RQ's CLI or the check reads: a subprocess gets only what a test gives it.
_OWN_PREFIXES = ("EMAIL", "RESEND_", "QUEUE_", "DRAIN_", "RQ_")
_OWN_NAMES = {"REDIS_URL", "KV_URL", "CRON_SECRET", "VERCEL_ENV"}


def clean_environ() -> dict[str, str]:
    """``os.environ`` without any setting of emailqueue, RQ or Vercel."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(_OWN_PREFIXES) and k.upper() not in _OWN_NAMES
    }


def subprocess_env(**values: str) -> dict[str, str]:
    return {**clean_environ(), **values}


def use_environment(monkeypatch: pytest.MonkeyPatch, cwd: Path, **values: str) -> dict[str, str]:
    """Make this process's environment a deployment's: no other emailqueue/RQ setting, ``values``
    set, and ``cwd`` as the working directory (so no developer's ``.env`` is read). Returns the same
    environment for subprocesses."""
    clean = clean_environ()
    for name in list(os.environ):
        if name not in clean:
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    return {**clean, **values}


def run_rq_worker(url: str, env: dict[str, str], cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The README's VM worker command, in burst mode: ``rq worker --with-scheduler --serializer json``."""
    argv = [RQ, "worker", "--with-scheduler", "--serializer", "json", "--url", url, "emails", "--burst"]
    return subprocess.run(
        [*argv, *extra], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


#: Pass as ``payload`` to :func:`json_call` for a call with no ``payload`` keyword at all.
NO_PAYLOAD: Any = object()


def json_call(payload: Any, func: str = JOB_FUNC_PATH, args: list[Any] | None = None) -> bytes:
    """A job hash's ``data`` as RQ's JSON serializer writes it: zlib(JSON [func, None, args, kwargs])."""
    kwargs = {} if payload is NO_PAYLOAD else {"payload": payload}
    return zlib.compress(json.dumps([func, None, args or [], kwargs]).encode())


def plant_job(conn: redis.Redis, job_id: str, data: bytes, **fields: str) -> None:
    """Write a queued job hash by hand, as anyone with write access to Redis could, and push it."""
    mapping: dict[FieldT, EncodableT] = {
        "status": "queued",
        "data": data,
        "origin": "emails",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "enqueued_at": "2026-01-01T00:00:00.000000Z",
        "description": f"planted {job_id}",
        "timeout": "60",
    }
    mapping.update(fields)
    conn.hset(f"rq:job:{job_id}", mapping=mapping)
    conn.rpush("rq:queue:emails", job_id)
    conn.sadd("rq:queues", "rq:queue:emails")
