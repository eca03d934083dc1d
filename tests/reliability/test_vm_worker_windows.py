"""a. A VM ``rq worker`` dies in one of the two moments between taking a job off the queue and
its work horse marking the job started; later drains must still deliver it exactly once.

RQ 3's worker takes a job in steps (rq/worker/base.py, rq/queue.py):

1. ``Queue.dequeue_any``: ``LMOVE rq:queue:emails -> rq:queue:emails:intermediate``;
2. ``prepare_execution`` (main process): the execution goes into ``rq:wip:emails``; the job's
   status is still ``queued``;
3. fork; the work horse's ``prepare_job_execution`` sets status ``started`` and removes the id
   from the intermediate list.

A SIGKILL after step 1 or step 2 leaves exactly the state these tests build with RQ's own calls
(the random SIGKILL tests in test_sigkill.py kill only after step 3). The drains that run later,
with no VM worker left, must deliver the email.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from emailqueue import Settings, drain, send_email
from emailqueue.testing import FakeResend

from .conftest import recover
from .faults import age_redis
from .ledger import Ledger, registry_sizes

pytestmark = pytest.mark.real_redis


def _dequeue(conn: redis.Redis) -> tuple[Worker, object]:
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    worker = Worker([queue], connection=conn, serializer=JSONSerializer)
    worker.register_birth()
    dequeued = Queue.dequeue_any([queue], None, connection=conn, serializer=JSONSerializer)
    assert dequeued is not None
    return worker, dequeued[0]


def _run(conn: redis.Redis, settings: Settings, ledger: Ledger, step: int) -> None:
    addresses = ["w0@example.com", "w1@example.com"]
    for address in addresses:
        send_email(to=address, subject="Hi", text="x", connection=conn, settings=settings)
    ledger.expect(addresses)
    worker, job = _dequeue(conn)
    if step == 2:
        worker.prepare_execution(job)  # type: ignore[arg-type]
    left = registry_sizes(conn)
    reports = [drain(connection=conn, settings=settings)]  # a run right after the crash
    age_redis(conn)  # much later: the dead worker's keys have expired
    reports += recover(conn, settings)
    counts = ledger.finish(died_after_step=step, left=left, later_runs=len(reports))
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed) == (0, 0, 0, 0), counts


def test_vm_worker_killed_right_after_dequeue(
    real_conn: redis.Redis, rsettings: Settings, fake_resend: FakeResend, new_ledger: Callable[[str], Ledger]
) -> None:
    """Scenario a, VM worker killed after LMOVE into rq:queue:emails:intermediate (step 1): with
    only drains left, the job is delivered exactly once."""
    _run(real_conn, rsettings, new_ledger("a/rq-worker-killed-after-dequeue"), 1)


def test_vm_worker_killed_after_registering_the_execution(
    real_conn: redis.Redis, rsettings: Settings, fake_resend: FakeResend, new_ledger: Callable[[str], Ledger]
) -> None:
    """Scenario a, VM worker killed after it put the execution in rq:wip:emails but before the
    work horse marked the job started (step 2): later drains deliver it exactly once."""
    _run(real_conn, rsettings, new_ledger("a/rq-worker-killed-before-start"), 2)
