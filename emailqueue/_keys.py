"""The Redis keys of one queue, as RQ names them (``RQ_KEY_PREFIX`` included), in one place."""

from __future__ import annotations

from dataclasses import dataclass

from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from ._constants import KEY_PREFIX


@dataclass(frozen=True)
class QueueKeys:
    """``queue``: the job-id list; ``intermediate``: where RQ 3's worker parks a job it dequeues;
    ``started`` (``rq:wip:<q>``), ``scheduled`` and ``failed``:
    RQ's registries; ``lock``: RQ's scheduler lock; ``workers``: the workers on the queue;
    ``intermediate_seen``: when a drain first saw each id there; ``orphans`` / ``orphans_gate``: the
    orphan sweep's cursor and counts, and the key that spaces its runs; ``job_prefix``: prepend
    to a job id for its hash."""

    name: str
    queue: str
    intermediate: str
    intermediate_seen: str
    started: str
    scheduled: str
    failed: str
    lock: str
    workers: str
    job_prefix: str
    orphans: str
    orphans_gate: str

    @classmethod
    def of(cls, queue: Queue) -> QueueKeys:
        return cls(
            name=queue.name,
            queue=queue.key,
            intermediate=IntermediateQueue.get_intermediate_queue_key(queue.key),
            intermediate_seen=f"{KEY_PREFIX}intermediate-seen:{queue.name}",
            started=StartedJobRegistry(queue=queue).key,
            scheduled=ScheduledJobRegistry(queue=queue).key,  # type: ignore[no-untyped-call]
            failed=FailedJobRegistry(queue=queue).key,
            lock=RQScheduler.get_locking_key(queue.name),
            workers=WORKERS_BY_QUEUE_KEY % queue.name,
            job_prefix=Job.key_for(""),
            orphans=f"{KEY_PREFIX}orphans:{queue.name}",
            orphans_gate=f"{KEY_PREFIX}orphans-gate:{queue.name}",
        )
