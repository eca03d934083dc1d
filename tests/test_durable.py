"""Durable enqueue: ``send_email(durable=True)`` / ``EMAIL_DURABLE`` returns only once the server
has the write on disk (an AOF fsynced before each reply, confirmed with WAITAOF) or on a replica
(WAIT), in one round trip, and refuses before writing anything where the server cannot confirm
either (no AOF, or an AOF fsynced every second, and no replica). Servers are the suite's own
valkey-servers, started here with the persistence each test needs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from emailqueue import ConfigurationError, QueueError, Settings, send_email, send_event_email
from emailqueue._durable import CAPABILITIES, Persistence, check_confirmed, read_persistence
from emailqueue._embedded import EmbeddedRedis
from emailqueue.testing import FakeResend
from tests.helpers.redis_stats import CommandCounter, counting_redis
from tests.reliability.faults import wait_for

pytestmark = pytest.mark.real_redis


@pytest.fixture(autouse=True)
def _fresh_capabilities() -> Iterator[None]:
    CAPABILITIES.clear()
    yield
    CAPABILITIES.clear()


@pytest.fixture
def aof_server() -> Iterator[EmbeddedRedis]:
    """An AOF fsynced before every reply."""
    with EmbeddedRedis(appendonly=True, extra_args=["--appendfsync", "always"]) as server:
        yield server


@pytest.fixture
def memory_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=False) as server:
        yield server


def warm(conn: redis.Redis, settings: Settings) -> None:
    """One durable call first: a server new to the enqueue script runs it again by its body
    (one more EVAL and WAITAOF), and what the server offers is read once."""
    send_email(
        to="warm@example.com", subject="Hi", text="x", connection=conn, settings=settings, durable=True
    )


def persistence(**changes: object) -> Persistence:
    base: dict[str, object] = {
        "server": "redis 7.0.15",
        "version": (7, 0, 15),
        "valkey": False,
        "aof": True,
        "fsync": "everysec",
        "rdb": "",
        "replicas": 0,
        "role": "master",
    }
    base.update(changes)
    return Persistence(**base)  # type: ignore[arg-type]


def test_durable_send_on_an_aof_always_server_is_confirmed_in_the_same_round_trip(
    aof_server: EmbeddedRedis, settings: Settings
) -> None:
    conn, trips = counting_redis(aof_server.url, protocol=2, driver_info=None)
    send_email(
        to="warm@example.com", subject="Hi", text="x", connection=conn, settings=settings, durable=True
    )
    trips.reset()  # the capability read and the script load happen once per server
    observer = redis.Redis.from_url(aof_server.url)
    with CommandCounter(observer) as counted:
        job_id = send_email(
            to="a@example.com", subject="Hi", text="x", connection=conn, settings=settings, durable=True
        )
    assert trips.round_trips == 1
    assert counted.by_command.get("waitaof") == 1
    # The server has the script: it runs by its SHA, its body is not sent again.
    assert counted.by_command.get("evalsha") == 1 and "eval" not in counted.by_command
    assert observer.lrange("rq:queue:emails", 0, -1)[-1] == job_id.encode()


def test_email_durable_setting_applies_and_durable_false_overrides_it(
    aof_server: EmbeddedRedis, settings: Settings
) -> None:
    conn = redis.Redis.from_url(aof_server.url)
    warm(conn, settings)
    durable = settings.model_copy(update={"email_durable": True})
    with CommandCounter(conn) as counted:
        send_email(to="a@example.com", subject="Hi", text="x", connection=conn, settings=durable)
    assert counted.by_command.get("waitaof") == 1
    with CommandCounter(conn) as counted:
        send_email(
            to="b@example.com", subject="Hi", text="x", connection=conn, settings=durable, durable=False
        )
    assert "waitaof" not in counted.by_command
    assert conn.llen("rq:queue:emails") == 3


def test_durable_refused_without_aof_or_replica_names_the_setting_and_writes_nothing(
    memory_server: EmbeddedRedis, settings: Settings
) -> None:
    conn = redis.Redis.from_url(memory_server.url)
    assert_refused(conn, settings, "appendonly yes")


def test_durable_refused_on_an_aof_fsynced_every_second(settings: Settings) -> None:
    """WAITAOF under everysec is not trusted: valkey 9.1.2 answers it before the fsync (seen
    with strace; the host-crash simulation in tests/reliability/test_host_crash.py loses emails
    it had confirmed)."""
    with EmbeddedRedis(appendonly=True, extra_args=["--appendfsync", "everysec"]) as server:
        conn = redis.Redis.from_url(server.url)
        assert_refused(conn, settings, "appendfsync always")


def assert_refused(conn: redis.Redis, settings: Settings, fix: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        send_email(
            to="a@example.com", subject="Hi", text="x", connection=conn, settings=settings, durable=True
        )
    message = str(caught.value)
    assert "EMAIL_DURABLE" in message and fix in message and "Nothing was queued" in message
    with pytest.raises(ConfigurationError):
        send_event_email("launch", ["a@example.com", "b@example.com"], "Hi", text="x", connection=conn,
                         settings=settings, durable=True)  # fmt: skip
    assert conn.dbsize() == 0


def test_durable_event_email_is_confirmed(aof_server: EmbeddedRedis, settings: Settings) -> None:
    conn = redis.Redis.from_url(aof_server.url)
    warm(conn, settings)
    with CommandCounter(conn) as counted:
        ids = send_event_email(
            "launch", ["a@example.com", "b@example.com"], "Hi", text="x", connection=conn, settings=settings,
            durable=True,
        )  # fmt: skip
    assert conn.llen("rq:queue:emails") == 2  # the warm-up email and the event's one chunk job
    assert list(ids) == [conn.lrange("rq:queue:emails", -1, -1)[0].decode()]  # the id it queued
    assert counted.by_command.get("waitaof") == 1


def test_durable_on_a_server_without_aof_but_with_a_replica_waits_for_the_replica(
    memory_server: EmbeddedRedis, settings: Settings
) -> None:
    with EmbeddedRedis(extra_args=["--replicaof", "127.0.0.1", str(memory_server.port)]) as replica:
        conn = redis.Redis.from_url(memory_server.url)
        on_replica = redis.Redis.from_url(replica.url)
        wait_for(
            lambda: on_replica.info("replication").get("master_link_status") == "up", 20, "the replica's sync"
        )
        found = read_persistence(conn)
        assert (found.aof, found.replicas) == (False, 1)
        warm(conn, settings)
        with CommandCounter(conn) as counted:
            job_id = send_email(
                to="a@example.com", subject="Hi", text="x", connection=conn, settings=settings, durable=True
            )
        assert counted.by_command.get("wait") == 1
        assert redis.Redis.from_url(replica.url).exists(f"rq:job:{job_id}") == 1


def test_durable_now_writes_durably_before_it_sends(
    aof_server: EmbeddedRedis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Durable composes with now=True: the confirmed write, then the claim and the send."""
    conn = redis.Redis.from_url(aof_server.url)
    warm(conn, settings)
    with CommandCounter(conn) as counted:
        job_id = send_email(
            to="a@example.com",
            subject="Hi",
            text="x",
            connection=conn,
            settings=settings,
            durable=True,
            now=True,
        )
    assert counted.by_command.get("waitaof") == 1
    assert len(fake_resend.accepted) == 1
    assert fake_resend.requests[-1].headers["idempotency-key"].endswith(job_id)
    assert conn.exists(f"rq:job:{job_id}") == 0  # sent and acked


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (persistence(fsync="always", version=(7, 2, 4)), ("WAITAOF", 1, 0, 1500)),
        (persistence(fsync="always", valkey=True, version=(9, 1, 2)), ("WAITAOF", 1, 0, 1500)),
        (persistence(fsync="always"), ()),  # Redis 7.0: the reply already means fsynced
        (persistence(aof=False, replicas=2), ("WAIT", 1, 1500)),
        (persistence(valkey=True, version=(9, 1, 2), replicas=1), ("WAIT", 1, 1500)),  # everysec
    ],
)
def test_the_wait_follows_what_the_server_offers(found: Persistence, expected: tuple[object, ...]) -> None:
    assert found.wait_command(1500) == expected


@pytest.mark.parametrize(
    ("found", "why"),
    [
        (persistence(), "fsyncs its AOF 'everysec'"),  # Redis 7.0: the reply does not mean on disk
        (persistence(valkey=True, version=(9, 1, 2)), "WAITAOF is not trusted under everysec"),
        (persistence(fsync="unknown", version=(7, 2, 4)), "fsync policy is unknown"),  # no CONFIG
        (persistence(aof=False), "keeps no AOF"),
        (persistence(aof=False, valkey=True, version=(9, 1, 2)), "keeps no AOF"),
    ],
)
def test_servers_that_cannot_confirm_are_refused_with_the_fix(found: Persistence, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as caught:
        found.wait_command(1500)
    assert "EMAIL_DURABLE" in str(caught.value)


def test_an_unconfirmed_write_is_a_queue_error_saying_the_email_is_queued() -> None:
    with pytest.raises(QueueError, match=r"EMAIL_DURABLE_TIMEOUT_S=1.5 s .*queued \(em_1\)"):
        check_confirmed(("WAITAOF", 1, 0, 1500), [0, 0], ["em_1"], 1.5)
    with pytest.raises(QueueError, match="WAIT confirmed 0 replica"):
        check_confirmed(("WAIT", 1, 1500), 0, ["em_1"], 1.5)
    with pytest.raises(QueueError, match="appendonly is disabled"):
        check_confirmed(("WAITAOF", 1, 0, 1500), redis.ResponseError("appendonly is disabled"), [], 1.5)
    check_confirmed(("WAITAOF", 1, 0, 1500), [1, 0], ["em_1"], 1.5)  # confirmed: no error


def test_loss_on_crash_says_what_each_setting_can_lose() -> None:
    assert persistence(fsync="always").loss_on_crash() == ""
    assert "1-2 s" in persistence().loss_on_crash()
    assert "snapshot" in persistence(aof=False, rdb="3600 1").loss_on_crash()
    assert "everything" in persistence(aof=False).loss_on_crash()
