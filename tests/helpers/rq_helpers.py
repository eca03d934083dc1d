"""Run jobs with RQ's own worker in-process, and move time forward for scheduled retries."""

from __future__ import annotations

from datetime import timedelta

from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now


def run_burst(queue: Queue) -> None:
    """One burst of a stock SimpleWorker with the JSON serializer (as a VM worker runs)."""
    SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)


def release_scheduled(queue: Queue) -> list[str]:
    """Enqueue every scheduled job now, as RQ's scheduler would once their time comes.

    Tests assert *when* a retry was scheduled; they don't sleep until then.
    """
    registry = ScheduledJobRegistry(queue=queue)
    ids = registry.get_jobs_to_schedule(int((now() + timedelta(days=365)).timestamp()))
    for job_id in ids:
        job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
        registry.remove(job)
        queue.enqueue_job(job)
    return ids


def run_until_settled(queue: Queue, rounds: int = 20) -> None:
    """Burst, release retries, repeat, until nothing is queued or scheduled."""
    for _ in range(rounds):
        run_burst(queue)
        if not release_scheduled(queue):
            return
    raise AssertionError(f"queue did not settle in {rounds} rounds")


def scheduled_times(queue: Queue) -> dict[str, float]:
    """job id -> the Unix time its retry is scheduled for."""
    registry = ScheduledJobRegistry(queue=queue)
    return {
        (m.decode() if isinstance(m, bytes) else m): score
        for m, score in queue.connection.zrange(registry.key, 0, -1, withscores=True)
    }


def registry_counts(queue: Queue) -> dict[str, int]:
    return {
        "queued": queue.count,
        "started": StartedJobRegistry(queue=queue).count,
        "scheduled": ScheduledJobRegistry(queue=queue).count,
        "failed": FailedJobRegistry(queue=queue).count,
    }
