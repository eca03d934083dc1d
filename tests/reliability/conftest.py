"""Fixtures of the reliability suite: settings on the suite's real server and the fake Resend,
a ledger per scenario, and the "later drains" that recover whatever a fault left behind."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from emailqueue import DrainReport, Settings, drain
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend
from tests.conftest import EXTERNAL_URL

from .faults import later_clock
from .ledger import Ledger, stuck_count


def make_settings(fake: FakeResend, redis_url: str, **overrides: Any) -> Settings:
    """Settings for one scenario: nothing read from the environment or a .env file."""
    values: dict[str, Any] = {
        "queue_redis_url": redis_url,
        "resend_api_key": fake.api_key,
        "resend_api_url": fake.url,
        "email_from": "App <app@example.com>",
        "resend_rate_limit": 0,
        "email_max_attempts": 10,
        "email_backoff_base_s": 1,
        "email_backoff_cap_s": 2,
        "resend_timeout_s": 5,
        "resend_connect_timeout_s": 2,
        "email_pack": False,  # the single path; the packing variants turn it on
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def rsettings(fake_resend: FakeResend, redis_url: str) -> Settings:
    return make_settings(fake_resend, redis_url)


@pytest.fixture
def new_ledger(real_conn: redis.Redis, fake_resend: FakeResend) -> Callable[[str], Ledger]:
    def make(scenario: str) -> Ledger:
        return Ledger(scenario, real_conn, fake_resend)

    return make


def people(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}@example.com" for i in range(n)]


def recover(
    conn: redis.Redis,
    settings: Settings,
    *,
    wall_clock: Callable[[], float] = later_clock,
    rounds: int = 20,
) -> list[DrainReport]:
    """Later drains, until nothing is queued, started or scheduled (at most ``rounds`` runs)."""
    reports: list[DrainReport] = []
    for _ in range(rounds):
        if stuck_count(conn) == 0:
            return reports
        report = drain(connection=conn, settings=settings, wall_clock=wall_clock)
        reports.append(report)
        if report.processed == 0:
            time.sleep(0.01)
    return reports


@pytest.fixture(scope="package")
def redis_url() -> Iterator[str]:
    """This package's own Redis-protocol server, stopped when its scenarios are done.

    The scenarios start and kill VM workers (``rq worker --with-scheduler``) against it. A
    scheduler process that outlives its scenario would otherwise keep writing its lock and
    heartbeat into the server every later test uses; with its own server stopped, it writes
    nowhere. ``EMAILQUEUE_TEST_REDIS_URL`` still points every tier at that one server.
    """
    if EXTERNAL_URL:
        yield EXTERNAL_URL
        return
    with EmbeddedRedis() as server:
        yield server.url
