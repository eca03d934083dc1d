"""What every scenario shares: the server, the fake Resend, settings, and an acceptance watcher."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis
from pydantic import SecretStr

from emailqueue import Settings
from emailqueue.testing import FakeResend

#: One scenario's figures from one repetition: name -> number.
Sample = dict[str, float]


@dataclass
class Env:
    """The bench's own Redis-protocol server and fake Resend, shared by all scenarios.

    ``plain`` is an uncounted client for setup (filling queues); ``observer`` only reads
    ``INFO commandstats``. For the report (the last repetition wins): ``notes`` holds the
    commands by name of each cost scenario, ``details`` other facts worth a line.
    """

    url: str
    fake: FakeResend
    plain: redis.Redis
    observer: redis.Redis
    notes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    def settings(self, *, rate_limit: float = 0, **overrides: Any) -> Settings:
        """Settings that point at the bench's server and fake, whatever the environment says."""
        values: dict[str, Any] = {
            "queue_redis_url": self.url,
            "resend_api_key": SecretStr(self.fake.api_key),
            "resend_api_url": self.fake.url,
            "email_from": "Bench <bench@example.com>",
            "email_queue_name": "emails",
            "resend_rate_limit": rate_limit,
            "resend_connect_timeout_s": 2.0,
            "resend_timeout_s": 5.0,
            "drain_concurrency": None,
            "drain_max_jobs": 10_000,
            "drain_time_budget_s": None,
            "email_batch": True,
            "email_pack": False,  # the single path; the packing scenario (bench/_pack.py) turns it on
            "emailqueue_dev": False,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    def fresh(self, *, latency: float = 0.0, rate_limit: float | None = None) -> None:
        """An empty database and a fake with a clean record (and an empty rate window)."""
        self.plain.flushdb()
        self.fake.reset()
        self.fake.latency = latency
        self.fake.rate_limit = rate_limit


class Watcher:
    """Polls the fake Resend from a thread and notes when each request and acceptance happened.

    ``accepted_at[i]``: when the fake's (i+1)-th accepted email was first seen; ``requests``:
    (seen at, status) for each request the fake answered. Times are ``time.monotonic()``; the
    poll interval (2 ms) bounds their error.
    """

    def __init__(self, fake: FakeResend, interval: float = 0.002) -> None:
        self.fake = fake
        self.interval = interval
        self.accepted_at: list[float] = []
        self.requests: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)

    def _poll(self) -> None:
        now = time.monotonic()
        accepted = len(self.fake.accepted)
        self.accepted_at += [now] * (accepted - len(self.accepted_at))
        requests = self.fake.requests
        self.requests += [(now, r.status) for r in requests[len(self.requests) :]]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def wait_for(self, accepted: int, timeout: float) -> float:
        """Block until ``accepted`` emails were seen; returns when the last of them was."""
        deadline = time.monotonic() + timeout
        while len(self.accepted_at) < accepted:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(self.accepted_at)} of {accepted} emails accepted in {timeout} s"
                )
            time.sleep(self.interval)
        return self.accepted_at[accepted - 1]

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


def expect(what: str, got: object, wanted: object) -> None:
    """A scenario that did not do its job measures nothing: stop the bench and say so."""
    if got != wanted:
        raise RuntimeError(f"{what}: expected {wanted!r}, got {got!r}")
