"""``emailqueue worker``'s packing round (emailqueue._worker): its own Resend client, bounded.

The worker processes themselves are tested in tests/reliability/test_vm_worker_packing.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from emailqueue import Settings, configure_worker, send_email
from emailqueue._jobs import RUNTIME
from emailqueue._resend import BatchResult, ResendClient
from emailqueue._worker import ROUND_MAX_REQUESTS, WORKER_CLASS_PATH, pack_round, round_client, worker_command
from emailqueue.testing import FakeResend


class Refuses:
    """The preloaded runtime's client, which belongs to the work horses: a round must not use it."""

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str:
        raise AssertionError("a packing round used the work horses' client")

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult:
        raise AssertionError("a packing round used the work horses' client")


@pytest.fixture
def psettings(settings: Settings) -> Iterator[Settings]:
    packing = settings.model_copy(update={"email_pack": True})
    configure_worker(packing, Refuses())
    yield packing
    configure_worker()


def test_a_round_sends_through_a_client_of_its_own_and_closes_it(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """Fork hazard: RQ forks a work horse per job and the horse inherits the worker's memory, so
    the runtime's client is the horses'. The round makes its own, and closes it when done."""
    for i in range(7):
        send_email(to=f"r{i}@example.com", subject="Hi", text="x", connection=real_conn, settings=psettings)
    made: list[httpx.Client] = []

    def make(settings: Settings) -> ResendClient:
        http = httpx.Client()
        made.append(http)
        return ResendClient(http, api_key=fake_resend.api_key, base_url=settings.resend_api_url)

    report = pack_round(real_conn, psettings, make_client=make)
    assert (report.sent, report.packs, report.requests) == (7, 1, 1)
    assert len(made) == 1 and made[0].is_closed
    assert [r.path for r in fake_resend.requests] == ["/emails/batch"]


def test_a_round_is_bounded_in_requests(
    real_conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """A round makes at most ROUND_MAX_REQUESTS requests; what is left waits for the next one."""
    settings = psettings.model_copy(update={"email_pack": False})
    for i in range(ROUND_MAX_REQUESTS + 3):
        send_email(to=f"b{i}@example.com", subject="Hi", text="x", connection=real_conn, settings=settings)
    report = pack_round(real_conn, settings)
    assert (report.requests, report.remaining, report.stopped) == (ROUND_MAX_REQUESTS, 3, "max_jobs")


def test_round_client_is_new_each_time_and_never_the_runtimes(psettings: Settings) -> None:
    first, second = round_client(psettings), round_client(psettings)
    assert first is not second and first is not RUNTIME.get()[1]
    for client in (first, second):
        assert isinstance(client, ResendClient)
        client.close()


def test_emailqueue_worker_runs_rq_with_the_packing_worker_class(settings: Settings) -> None:
    argv, env = worker_command(settings, "redis://127.0.0.1:6379/0")
    assert env["RQ_WORKER_CLASS"] == WORKER_CLASS_PATH == "emailqueue.EmailWorker"
    assert env["RQ_JOB_CLASS"] == "emailqueue.EmailJob"
    assert "--url" not in argv
