"""Jobs planted in Redis by someone else: never executed, each failed alone with a clear reason, and
the real emails around them still delivered. Against the serverless drain and a VM ``rq worker``.

tests/test_drain.py already shows one pickle job refused by the drain. Here: a pickle whose
*unpickling* runs code (the real attack), every kind of malformed payload, the stock VM worker, and
job hashes whose RQ fields are garbage.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from emailqueue import Settings, drain, queue_status, send_email
from emailqueue._constants import META_KEY
from emailqueue.testing import FakeResend
from tests.security.conftest import (
    EMAILQUEUE,
    NO_PAYLOAD,
    json_call,
    plant_job,
    run_rq_worker,
    subprocess_env,
)


class _TouchOnUnpickle:
    """A pickle gadget: ``pickle.loads`` calls ``Path(marker).touch()``; no emailqueue code is needed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def evil_pickle(marker: Path) -> bytes:
    """RQ's call tuple ``(func, instance, args, kwargs)`` pickled, with the gadget as ``func``."""
    return zlib.compress(pickle.dumps((_TouchOnUnpickle(marker), None, (), {})))


def email(to: str) -> dict[str, Any]:
    return {"from": "App <app@example.com>", "to": [to], "subject": "s", "text": "t"}


def payload_v1(to: str, **changes: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "email",
        "email": email(to),
        "idempotency_key": f"k-{to}",
        "event_id": None,
        **changes,
    }


def payload_v2(n: int, ids: list[str]) -> dict[str, Any]:
    emails = [email(f"batch{i}@example.com") for i in range(n)]
    return {"v": 2, "kind": "batch", "emails": emails, "ids": ids, "idempotency_key": "kb", "event_id": "e"}


def malformed(marker: Path) -> dict[str, tuple[bytes, str]]:
    """job id -> (its ``data``, the reason the drain must give)."""
    return {
        "pickle": (evil_pickle(marker), "not a JSON-serialized RQ call"),
        "badjson": (
            zlib.compress(b'["emailqueue._jobs.deliver", null, [], {"payload": '),
            "not a JSON-serialized",
        ),
        "notzlib": (b"definitely not zlib", "not a JSON-serialized RQ call"),
        "nopayload": (json_call(NO_PAYLOAD), "not an emailqueue job"),
        "foreign": (
            json_call(NO_PAYLOAD, func="pathlib.Path.touch", args=[str(marker)]),
            "not an emailqueue job",
        ),
        "positional": (json_call(payload_v1("p@example.com"), args=["x"]), "not an emailqueue job"),
        "list": (json_call([1, 2]), "expected a JSON object"),
        "v99": (json_call({"v": 99, "idempotency_key": "k"}), "unknown payload version 99"),
        "noemail": (json_call(payload_v1("x@example.com", email=None)), "'email' must be an object"),
        "nokey": (json_call(payload_v1("y@example.com", idempotency_key="")), "'idempotency_key'"),
        "idsmismatch": (json_call(payload_v2(3, ["ev_1", "ev_2"])), "'ids' must list one job id per email"),
        "batch101": (json_call(payload_v2(101, [f"ev_{i}" for i in range(101)])), "'emails' must be a list"),
    }


def failed_ids(queue: Queue) -> set[str]:
    return set(FailedJobRegistry(queue=queue).get_job_ids(cleanup=False))


def test_planted_and_malformed_jobs_each_fail_alone_in_the_drain(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    planted = malformed(marker)
    send_email(to="first@example.com", subject="s", text="t", connection=conn, settings=settings)
    for job_id, (data, _) in planted.items():
        plant_job(conn, job_id, data)
    send_email(to="last@example.com", subject="s", text="t", connection=conn, settings=settings)

    report = drain(connection=conn, settings=settings)

    assert not marker.exists(), "a planted job ran code"
    assert sorted(e.to[0] for e in fake_resend.accepted) == ["first@example.com", "last@example.com"]
    assert (report.sent, report.failed, report.retrying) == (2, len(planted), 0)
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    assert failed_ids(queue) == set(planted)
    assert queue.count == 0 and StartedJobRegistry(queue=queue).get_job_ids(cleanup=False) == []
    for job_id, (_, reason) in planted.items():
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        error = job.meta[META_KEY]["error"]
        assert (job.get_status(), error["name"]) == ("failed", "bad_payload"), job_id
        assert reason in error["message"], (job_id, error)
    # The admin view names the reason of each, without running or decoding anything.
    shown = {f.id: f.error for f in queue_status(conn, settings, failed_limit=50).recent_failed}
    assert {i: e.name for i, e in shown.items()} == dict.fromkeys(planted, "bad_payload")


def test_the_stock_rq_worker_refuses_a_pickle_payload_and_malformed_jobs_fail_alone(
    real_conn: redis.Redis, redis_url: str, settings: Settings, fake_resend: FakeResend, tmp_path: Path
) -> None:
    """The README's ``rq worker --serializer json``: the pickle is never unpickled."""
    marker = tmp_path / "pwned"
    everything = malformed(marker)
    # A stock worker forks per job (~0.4 s each), so a representative few. Not "foreign": a stock
    # worker runs any importable function (see the DEFECT test below).
    planted = {k: everything[k] for k in ("pickle", "badjson", "nopayload", "v99", "idsmismatch")}
    send_email(to="first@example.com", subject="s", text="t", connection=real_conn, settings=settings)
    for job_id, (data, _) in planted.items():
        plant_job(real_conn, job_id, data)
    send_email(to="last@example.com", subject="s", text="t", connection=real_conn, settings=settings)

    env = subprocess_env(
        RESEND_API_KEY=fake_resend.api_key, RESEND_API_URL=fake_resend.url, RESEND_RATE_LIMIT="0"
    )
    done = run_rq_worker(redis_url, env, tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists(), "the VM worker unpickled a planted job"
    assert sorted(e.to[0] for e in fake_resend.accepted) == ["first@example.com", "last@example.com"]
    queue = Queue("emails", connection=real_conn, serializer=JSONSerializer)
    assert failed_ids(queue) == set(planted)
    assert queue.count == 0
    shown = {f.id: f.error for f in queue_status(real_conn, settings, failed_limit=50).recent_failed}
    # Payloads our job function parsed: our record, as under the drain.
    for job_id in ("v99", "idsmismatch"):
        assert shown[job_id].name == "bad_payload", (job_id, shown[job_id])
        assert planted[job_id][1] in shown[job_id].message
    # Data RQ itself could not decode: RQ's own reason, shown by the status API.
    for job_id in ("pickle", "badjson"):
        assert "DeserializationError" in shown[job_id].name + shown[job_id].message, shown[job_id]
    assert "deliver() missing 1 required" in shown["nopayload"].message, shown["nopayload"]
    assert "DeserializationError" in done.stderr


# ---------------------------------------------------------------------------------------------
# Defects
# ---------------------------------------------------------------------------------------------


def test_the_vm_worker_does_not_run_a_planted_job_naming_another_function(
    real_conn: redis.Redis, redis_url: str, settings: Settings, fake_resend: FakeResend, tmp_path: Path
) -> None:
    """Whoever can write to Redis must not get code execution on the worker host (and its
    RESEND_API_KEY). The drain refuses any function but ``deliver``; the VM worker must too."""
    marker = tmp_path / "pwned"
    plant_job(real_conn, "foreign", json_call(NO_PAYLOAD, func="pathlib.Path.touch", args=[str(marker)]))
    send_email(to="last@example.com", subject="s", text="t", connection=real_conn, settings=settings)
    env = subprocess_env(
        QUEUE_REDIS_URL=redis_url,
        RESEND_API_KEY=fake_resend.api_key,
        RESEND_API_URL=fake_resend.url,
        RESEND_RATE_LIMIT="0",
    )
    done = subprocess.run(
        [EMAILQUEUE, "worker", "--burst"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [e.to[0] for e in fake_resend.accepted] == ["last@example.com"]
    assert not marker.exists(), "the VM worker ran pathlib.Path.touch from a planted job"
    assert failed_ids(Queue("emails", connection=real_conn)) == {"foreign"}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"meta": "{{{"}, id="meta-not-json"),
        pytest.param({"meta": "[1, 2]"}, id="meta-a-list"),
        pytest.param({"retries_left": "abc"}, id="retries_left"),
        pytest.param({"created_at": "garbage"}, id="created_at"),
        pytest.param({"timeout": "abc"}, id="timeout"),
    ],
)
def test_a_job_hash_with_garbage_rq_fields_fails_alone_in_the_drain(
    fields: dict[str, str], conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    send_email(to="first@example.com", subject="s", text="t", connection=conn, settings=settings)
    plant_job(conn, "garbage", zlib.compress(b"{not json"), **fields)
    send_email(to="last@example.com", subject="s", text="t", connection=conn, settings=settings)

    report = drain(connection=conn, settings=settings)  # must not raise

    assert (report.sent, report.failed) == (2, 1)
    assert sorted(e.to[0] for e in fake_resend.accepted) == ["first@example.com", "last@example.com"]
    queue = Queue("emails", connection=conn, serializer=JSONSerializer)
    # Sent jobs are acked (not left claimed, to be re-sent after the abandon timeout) ...
    assert StartedJobRegistry(queue=queue).get_job_ids(cleanup=False) == []
    assert sorted(k.decode() for k in conn.scan_iter(match="rq:job:*")) == ["rq:job:garbage"]
    # ... and the garbage job is failed with a reason.
    assert failed_ids(queue) == {"garbage"}
    (shown,) = queue_status(conn, settings).recent_failed
    assert shown.error.name == "bad_payload"


def test_pickle_gadget_really_runs_when_unpickled(tmp_path: Path) -> None:
    """The control: the planted data above is a live exploit, so "not executed" means something."""
    marker = tmp_path / "control"
    pickle.loads(zlib.decompress(evil_pickle(marker)))
    assert marker.exists()
    os.remove(marker)
