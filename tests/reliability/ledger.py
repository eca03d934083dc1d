"""The reliability suite's bookkeeping: what was enqueued, what Resend (the fake) accepted, and
what is left in Redis.

A scenario tells the :class:`Ledger` which recipients it enqueued; at the end :meth:`Ledger.finish`
counts, from the fake's record and raw Redis reads only:

- ``lost``: a recipient that was enqueued, never accepted, and not failed with a stated reason;
- ``duplicated``: extra acceptances of a recipient (a batch job's emails share one idempotency
  key, so acceptances are counted per recipient address; an idempotent replay is not one);
- ``stuck``: jobs still queued, started, scheduled or in a pack (``emailqueue:packs:<q>``), or
  parked in RQ 3's intermediate queue
  (``rq:queue:<q>:intermediate``, where a VM worker moves a job it dequeues); raw ``LLEN``/``ZCARD``
  only: RQ's ``.count`` runs registry cleanup, which would change what it measures;
- ``failed``: recipients whose job is in the failed registry, with the reason recorded.

It prints one line per scenario and, when ``EMAILQUEUE_RELIABILITY_RESULTS`` names a file, appends
the counts to it as one JSON line, so docs/RELIABILITY.md can be regenerated from measured runs.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue.testing import FakeResend

RESULTS_ENV = "EMAILQUEUE_RELIABILITY_RESULTS"
#: Read once, at import: some tests give themselves a deployment's clean environment.
RESULTS_PATH = os.environ.get(RESULTS_ENV)


def registry_sizes(conn: redis.Redis, queue: str = "emails") -> dict[str, int]:
    """Raw sizes of the queue, RQ's intermediate queue and its started/scheduled/failed
    registries (no cleanup runs)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.llen(f"rq:queue:{queue}")
        pipe.llen(f"rq:queue:{queue}:intermediate")
        pipe.zcard(f"rq:wip:{queue}")
        pipe.zcard(f"rq:scheduled:{queue}")
        pipe.zcard(f"rq:failed:{queue}")
        pipe.zcard(f"emailqueue:packs:{queue}")
        queued, intermediate, started, scheduled, failed, packs = pipe.execute()
    return {
        "queued": queued,
        "intermediate": intermediate,
        "started": started,
        "scheduled": scheduled,
        "failed": failed,
        "packs": packs,
    }


def unsettled(sizes: dict[str, int]) -> int:
    """Jobs not yet settled: queued (or parked by a VM worker), started, scheduled, or in a pack
    (a batch request of queued single emails in flight or waiting for its retry)."""
    return sizes["queued"] + sizes["intermediate"] + sizes["started"] + sizes["scheduled"] + sizes["packs"]


def stuck_count(conn: redis.Redis, queue: str = "emails") -> int:
    return unsettled(registry_sizes(conn, queue))


def _recipients(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return []
    emails = payload.get("emails") if payload.get("kind") == "batch" else [payload.get("email")]
    out: list[str] = []
    for email in emails or []:
        to = email.get("to", []) if isinstance(email, dict) else []
        out += [to] if isinstance(to, str) else list(to)
    return out


def _reason(job: Job) -> str | None:
    """The failure reason recorded on a failed job (our meta first, then RQ's exc string)."""
    record = job.meta.get("emailqueue")
    if isinstance(record, dict) and isinstance(record.get("error"), dict):
        name = record["error"].get("name")
        if name:
            return str(name)
    result = job.latest_result()
    if result is not None and result.exc_string:
        return result.exc_string.strip().splitlines()[-1][:80]
    return None


@dataclass
class Counts:
    """What one scenario measured."""

    scenario: str
    enqueued: int
    accepted: int
    replays: int
    requests: int
    failed: int
    failed_reasons: dict[str, int]
    lost: int
    duplicated: int
    duplicated_keys: int
    unexpected: int
    stuck: int
    registries: dict[str, int]
    elapsed_s: float
    details: dict[str, Any] = field(default_factory=dict)
    lost_recipients: list[str] = field(default_factory=list)
    duplicated_recipients: list[str] = field(default_factory=list)
    unexpected_recipients: list[str] = field(default_factory=list)

    def line(self) -> str:
        reasons = ", ".join(f"{name} x{n}" for name, n in sorted(self.failed_reasons.items()))
        extra = " ".join(f"{k}={v}" for k, v in self.details.items())
        return (
            f"[reliability] {self.scenario}{' ' + extra if extra else ''} | enqueued={self.enqueued} "
            f"accepted={self.accepted} duplicates_suppressed={self.replays} "
            f"failed={self.failed}{f' ({reasons})' if reasons else ''} lost={self.lost} "
            f"duplicated={self.duplicated} stuck={self.stuck} requests={self.requests} "
            f"| {self.elapsed_s:.2f}s"
        )


class Ledger:
    """Tracks one scenario: call :meth:`expect` with what you enqueue, :meth:`finish` at the end."""

    def __init__(self, scenario: str, conn: redis.Redis, fake: FakeResend, queue: str = "emails") -> None:
        self.scenario = scenario
        self.conn = conn
        self.fake = fake
        self.queue = queue
        self.recipients: list[str] = []
        self.started = time.monotonic()

    def expect(self, recipients: Iterable[str]) -> None:
        """Recipients just enqueued (each address once per scenario)."""
        new = [r.lower() for r in recipients]
        assert not set(new) & set(self.recipients), "a ledger needs unique recipients per scenario"
        self.recipients += new

    def failed_recipients(self) -> dict[str, str | None]:
        """recipient -> the stated reason (None: failed with no reason recorded)."""
        out: dict[str, str | None] = {}
        for raw in self.conn.zrange(f"rq:failed:{self.queue}", 0, -1):
            job_id = raw.decode()
            try:
                job = Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            reason = _reason(job)
            for recipient in _recipients(job.kwargs.get("payload")):
                out[recipient.lower()] = reason
        return out

    def count(self, **details: Any) -> Counts:
        accepted = Counter(a.lower() for email in self.fake.accepted for a in email.to)
        failed = self.failed_recipients()
        expected = set(self.recipients)
        lost = sorted(r for r in expected if r not in accepted and failed.get(r) is None)
        dupes = sorted(r for r, n in accepted.items() if n > 1)
        by_key = self.fake.accepted_count_by_key()
        sizes = registry_sizes(self.conn, self.queue)
        reasons = Counter(reason for r, reason in failed.items() if r in expected and reason is not None)
        return Counts(
            scenario=self.scenario,
            enqueued=len(self.recipients),
            accepted=sum(accepted.values()),
            replays=self.fake.replays,
            requests=len(self.fake.requests),
            failed=sum(reasons.values()),
            failed_reasons=dict(reasons),
            lost=len(lost),
            duplicated=sum(accepted[r] - 1 for r in dupes),
            duplicated_keys=sum(n - 1 for n in by_key.values() if n > 1),
            unexpected=sum(n for r, n in accepted.items() if r not in expected),
            stuck=unsettled(sizes),
            registries=sizes,
            elapsed_s=round(time.monotonic() - self.started, 3),
            details=details,
            lost_recipients=lost[:10],
            duplicated_recipients=dupes[:10],
            unexpected_recipients=sorted(r for r in accepted if r not in expected)[:10],
        )

    def finish(self, **details: Any) -> Counts:
        """Count, print the scenario's line, and append it to ``$EMAILQUEUE_RELIABILITY_RESULTS``."""
        counts = self.count(**details)
        print("\n" + counts.line(), flush=True)
        record(counts)
        return counts


def record(counts: Counts) -> None:
    """Append ``counts`` as one JSON line to the file named by ``EMAILQUEUE_RELIABILITY_RESULTS``."""
    path = RESULTS_PATH
    if not path:
        return
    row = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **asdict(counts)}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row, sort_keys=True) + "\n")
