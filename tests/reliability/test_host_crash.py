"""A crash of the Redis host, simulated (tests/reliability/crash.py): every AOF file is cut back to
its last completed fsync, as a power cut would leave the disk, and the server restarts from it.

- The simulation is checked first: with ``appendfsync no`` the server never fsyncs, so every
  acknowledged email is gone after the crash.
- A durable enqueue is never lost: ``appendfsync always`` plus ``durable=True`` loses 0 of the
  acknowledged calls, a 300-recipient fan-out sent just before the crash included.
- ``WAITAOF`` under ``everysec`` is not a durability guarantee on this server (valkey 9.1.2): it
  answers before the fsync, so emails it confirmed are lost. That is why ``durable=True`` refuses
  ``everysec`` (tests/test_durable.py).

Needs a C compiler (cc) for the fsync logger. Time is a parameter: each run sends for 0.3 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emailqueue import Settings

from .crash import CrashResult, build_shim, simulate

pytestmark = pytest.mark.real_redis


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture
def plain_settings() -> Settings:
    return Settings(_env_file=None, email_from="App <app@example.com>", resend_rate_limit=0)  # type: ignore[call-arg]


def crash(shim: Path, settings: Settings, **kwargs: object) -> CrashResult:
    result = simulate(shim, settings, duration_s=0.3, fanout=300, **kwargs)  # type: ignore[arg-type]
    print(f"\n{result}")
    assert result.acknowledged > 0
    return result


def test_the_simulation_loses_everything_a_server_never_fsynced(shim: Path, plain_settings: Settings) -> None:
    result = crash(shim, plain_settings, policy="no")
    assert result.lost == result.acknowledged
    assert result.fanout_lost == 300


def test_a_durable_enqueue_loses_nothing_it_acknowledged(shim: Path, plain_settings: Settings) -> None:
    result = crash(shim, plain_settings, policy="always", durable=True)
    assert (result.lost, result.fanout_lost) == (0, 0)


def test_waitaof_under_everysec_confirms_writes_a_host_crash_then_loses(
    shim: Path, plain_settings: Settings
) -> None:
    """Every call here was confirmed by ``WAITAOF 1 0`` ([1, 0]) before the next one; the last
    call (the fan-out) is confirmed right before the crash, well inside the 1 s fsync period."""
    result = crash(shim, plain_settings, policy="everysec", waitaof=True)
    # Confirmed, then lost: all of it unless an everysec fsync happened to land in the few
    # microseconds between the last confirmation and the crash.
    assert result.lost + result.fanout_lost > 0
