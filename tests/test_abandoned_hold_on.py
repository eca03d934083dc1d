"""A job abandoned on its last attempt is held on under its key, never failed while Resend can tell.

An execution whose worker, drain or caller died mid-send is ambiguous: it may have died after
Resend accepted the email (docs/PLATFORM.md, "Resend: idempotency keys": a repeat of the key
within 24 h is answered with the original reply and sends nothing). So a job abandoned with no
attempts left is resent under its key at the backoff cap, like an ambiguous send
(tests/test_outcome_unknown.py), and fails as ``outcome_unknown`` only when the key's window is
closing. Covered here: the drain's recovery (RECOVER, then HOLD or FAIL) and RQ's own cleanup of
abandoned executions with ``EmailJob`` (its failure callback), run in-process. Real worker
processes killed with SIGKILL: tests/reliability/test_abandoned_last_attempt.py.

Time is injected: the drain takes ``wall_clock=``, RQ's cleanup a ``timestamp``, and "a job
created 23 h ago" is a job whose ``created_at`` says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from emailqueue import EmailJob, Settings, configure_worker, drain, send_email
from emailqueue._failure import read_record
from emailqueue._retry import ABANDONED, KEY_WINDOW_MARGIN_S, KEY_WINDOW_S, OUTCOME_UNKNOWN
from emailqueue._store import JobStore
from emailqueue.testing import FakeResend

#: Seconds: past any claim's abandonment deadline, well inside the key's 24 h window.
LATER = 10_000.0
#: Seconds after a job's creation at which its key's window is closing: no more resends.
CLOSING = KEY_WINDOW_S - KEY_WINDOW_MARGIN_S


@pytest.fixture(autouse=True)
def worker_runtime(settings: Settings) -> Iterator[None]:
    configure_worker(settings)
    yield
    configure_worker()


@pytest.fixture
def last_attempt(settings: Settings) -> Settings:
    """Three attempts, the backoff doubling from 10 s to a cap of 20 s: a job that has spent its
    attempts is held at the cap (attempt 3: 10 * 2**2 = 40, capped at 20; 10 to 20 s with jitter).
    Jobs enqueued with :func:`_enqueue` are on their last attempt."""
    return settings.model_copy(
        update={"email_max_attempts": 3, "email_backoff_base_s": 10, "email_backoff_cap_s": 20}
    )


def _enqueue(conn: redis.Redis, settings: Settings, *, last: bool = True) -> str:
    """Queue one email; ``last``: its other attempts were spent (RQ's ``retries_left`` is 0)."""
    job_id = str(send_email(to="a@example.com", subject="s", text="t", connection=conn, settings=settings))
    if last:
        conn.hset(f"rq:job:{job_id}", "retries_left", 0)
    return job_id


def _claim_and_die(conn: redis.Redis, settings: Settings, job_id: str) -> str:
    """A drain (or a VM worker, as RQ's cleanup sees it) takes the job and dies mid-send.
    Returns its started-registry member."""
    (row,) = JobStore(conn, "emails", settings).claim(
        n=1, now=time.time(), execution_prefix="dead-", worker="w", grace=30
    )
    assert row.job_id == job_id
    return row.member


def _created_hours_ago(conn: redis.Redis, job_id: str, hours: float) -> None:
    created = datetime.fromtimestamp(time.time() - hours * 3600, UTC)
    conn.hset(f"rq:job:{job_id}", "created_at", utcformat(created))


def _state(conn: redis.Redis, job_id: str) -> dict[str, object]:
    key = f"rq:job:{job_id}"
    return {
        "status": conn.hget(key, "status"),
        "scheduled": conn.zscore("rq:scheduled:emails", job_id) is not None,
        "failed": conn.zcard("rq:failed:emails"),
        "started": conn.zcard("rq:wip:emails"),
        "queued": conn.llen("rq:queue:emails"),
    }


HELD = {"status": b"scheduled", "scheduled": True, "failed": 0, "started": 0, "queued": 0}


# --- the drain's recovery -----------------------------------------------------------------------


def test_a_drain_holds_on_to_a_job_abandoned_on_its_last_attempt_and_resends_it_under_its_key(
    conn: redis.Redis, last_attempt: Settings, fake_resend: FakeResend
) -> None:
    """Not failed: scheduled at the backoff cap, its record saying Resend may have it; the resend
    goes out under the job's own key, and the job is done."""
    job_id = _enqueue(conn, last_attempt)
    member = _claim_and_die(conn, last_attempt, job_id)
    conn.hset(f"rq:execution:{member}", "worker_name", "w")  # as a VM worker's execution
    conn.zadd(f"rq:executions:{job_id}", {member.rsplit(":", 1)[1]: 1})
    t0 = time.time() + LATER

    report = drain(connection=conn, settings=last_attempt, wall_clock=lambda: t0)
    assert (report.recovered, report.failed, len(fake_resend.requests)) == (1, 0, 0)
    assert _state(conn, job_id) == HELD
    due = conn.zscore("rq:scheduled:emails", job_id) or 0
    cap = last_attempt.email_backoff_cap_s
    assert t0 + cap / 2 <= due <= t0 + cap + 1, "held at the backoff cap (half of it at least: jitter)"
    record = read_record(conn.hget(f"rq:job:{job_id}", "meta"))
    assert (record.get("error") or {}).get("name") == ABANDONED
    assert record.get("maybe_sent") is True
    assert abs((record.get("next_retry_in_s") or 0) - (due - t0)) <= 1
    assert not conn.exists(f"rq:execution:{member}"), "the dead execution is forgotten"
    assert conn.zcard(f"rq:executions:{job_id}") == 0

    report = drain(connection=conn, settings=last_attempt, wall_clock=lambda: due + 1)
    assert (report.promoted, report.sent, report.failed) == (1, 1, 0)
    assert [r.idempotency_key for r in fake_resend.accepted] == [f"emailqueue-{job_id}"]
    assert not conn.exists(f"rq:job:{job_id}")
    assert _state(conn, job_id)["failed"] == 0


def test_a_drain_holds_on_to_a_job_requeued_long_after_its_creation_in_the_requeues_window(
    conn: redis.Redis, last_attempt: Settings
) -> None:
    """Created 30 h ago, requeued now (its record's ``window_from``), abandoned on its last
    attempt: its key's window runs from the requeue, so it is held on, not failed unknown."""
    job_id = _enqueue(conn, last_attempt)
    _created_hours_ago(conn, job_id, 30)
    record = {"attempts": 0, "requeued": 1, "window_from": int(time.time())}
    conn.hset(f"rq:job:{job_id}", "meta", json.dumps({"emailqueue": record}))
    _claim_and_die(conn, last_attempt, job_id)
    report = drain(connection=conn, settings=last_attempt, wall_clock=lambda: time.time() + LATER)
    assert (report.recovered, report.failed) == (1, 0)
    assert _state(conn, job_id) == HELD


def test_a_job_that_keeps_being_abandoned_is_held_until_the_window_closes_then_fails_unknown(
    conn: redis.Redis, last_attempt: Settings, fake_resend: FakeResend
) -> None:
    """Each abandonment inside the window holds it again; the one after the window closes fails
    it as ``outcome_unknown``, whose message says it may have been delivered. Nothing is sent."""
    job_id = _enqueue(conn, last_attempt)
    created = time.time()
    for hours in (3.0, 12.0, 22.0):
        _claim_and_die(conn, last_attempt, job_id)
        now = created + hours * 3600
        drain(connection=conn, settings=last_attempt, max_jobs=0, wall_clock=lambda now=now: now)
        assert _state(conn, job_id) == HELD, hours
        due = conn.zscore("rq:scheduled:emails", job_id) or 0
        assert due <= created + CLOSING + 1, "never due after the key's window starts closing"
        conn.zrem("rq:scheduled:emails", job_id)  # it comes due and a worker takes it ...
        conn.hset(f"rq:job:{job_id}", "status", "queued")
        conn.rpush("rq:queue:emails", job_id)

    _claim_and_die(conn, last_attempt, job_id)  # ... and dies again, as the window closes
    report = drain(connection=conn, settings=last_attempt, max_jobs=0, wall_clock=lambda: created + CLOSING)
    assert report.recovered == 1
    assert conn.hget(f"rq:job:{job_id}", "status") == b"failed"
    assert conn.zscore("rq:failed:emails", job_id) is not None
    record = read_record(conn.hget(f"rq:job:{job_id}", "meta"))
    error = record.get("error") or {"name": "", "message": ""}
    assert error["name"] == OUTCOME_UNKNOWN
    assert "may have delivered" in error["message"] and "abandoned" in error["message"]
    assert record.get("maybe_sent") is True
    assert (record.get("attempts"), len(fake_resend.requests)) == (4, 0)


def test_a_held_job_that_comes_due_as_the_window_closes_is_failed_not_sent(
    conn: redis.Redis, last_attempt: Settings, fake_resend: FakeResend
) -> None:
    """A held job whose turn comes within 10 minutes of the key's end is never sent: Resend could
    take it for a new email. It fails as ``outcome_unknown``."""
    job_id = _enqueue(conn, last_attempt)
    _claim_and_die(conn, last_attempt, job_id)
    created = time.time()
    drain(connection=conn, settings=last_attempt, max_jobs=0, wall_clock=lambda: created + LATER)
    assert _state(conn, job_id) == HELD

    report = drain(connection=conn, settings=last_attempt, wall_clock=lambda: created + KEY_WINDOW_S - 60)
    assert (report.promoted, report.sent, report.failed) == (1, 0, 1)
    assert fake_resend.requests == []
    error = read_record(conn.hget(f"rq:job:{job_id}", "meta")).get("error") or {"name": ""}
    assert error["name"] == OUTCOME_UNKNOWN


def test_a_job_abandoned_with_attempts_left_is_requeued_at_once_as_before(
    conn: redis.Redis, settings: Settings
) -> None:
    """Holding on is for the last attempt only: with attempts left RECOVER requeues it now,
    spending one (tests/test_store.py)."""
    job_id = _enqueue(conn, settings, last=False)
    _claim_and_die(conn, settings, job_id)
    report = drain(connection=conn, settings=settings, max_jobs=0, wall_clock=lambda: time.time() + LATER)
    assert report.recovered == 1
    assert conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]
    assert conn.hget(f"rq:job:{job_id}", "retries_left") == str(settings.email_max_attempts - 2).encode()
    assert read_record(conn.hget(f"rq:job:{job_id}", "meta")).get("maybe_sent") is True, (
        "the dead send may have been accepted"
    )


_ERROR = {"name": "x", "message": "m", "status_code": None}


@pytest.mark.parametrize(
    ("meta", "after"),
    [
        pytest.param(
            {"emailqueue": {"error": _ERROR, "attempts": 2}, "o": [1]},
            {"emailqueue": {"error": _ERROR, "attempts": 2, "maybe_sent": True}, "o": [1]},
            id="a record and other keys kept",
        ),
        pytest.param({"emailqueue": "junk"}, {"emailqueue": {"maybe_sent": True}}, id="junk record replaced"),
    ],
)
def test_recovery_marks_maybe_sent_in_rqs_json_meta_keeping_the_rest(
    conn: redis.Redis, settings: Settings, meta: dict[str, object], after: dict[str, object]
) -> None:
    """RECOVER edits the meta JSON in Lua (cjson): whatever else it holds comes back unchanged
    for RQ's JSON serializer and the failure record's reader."""
    job_id = _enqueue(conn, settings, last=False)
    conn.hset(f"rq:job:{job_id}", "meta", json.dumps(meta))
    _claim_and_die(conn, settings, job_id)
    drain(connection=conn, settings=settings, max_jobs=0, wall_clock=lambda: time.time() + LATER)
    assert json.loads(conn.hget(f"rq:job:{job_id}", "meta") or b"") == after


def test_recovery_leaves_meta_it_cannot_read_as_it_is(conn: redis.Redis, settings: Settings) -> None:
    """Not JSON: the job is still requeued; its meta is not rewritten (nothing is lost from it)."""
    job_id = _enqueue(conn, settings, last=False)
    conn.hset(f"rq:job:{job_id}", "meta", b"\x80not json")
    _claim_and_die(conn, settings, job_id)
    report = drain(connection=conn, settings=settings, max_jobs=0, wall_clock=lambda: time.time() + LATER)
    assert report.recovered == 1
    assert conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]
    assert conn.hget(f"rq:job:{job_id}", "meta") == b"\x80not json"


def test_a_job_abandoned_with_attempts_left_is_held_on_when_its_last_send_fails_definitely(
    conn: redis.Redis, last_attempt: Settings, fake_resend: FakeResend
) -> None:
    """The dead send may have been accepted. When the job's later sends then run out on definite
    refusals (a 408: nothing processed), it is not failed with that error: held on under its key
    (RECOVER marked it ``maybe_sent``), as any job Resend may have."""
    job_id = _enqueue(conn, last_attempt, last=False)
    conn.hset(f"rq:job:{job_id}", "retries_left", 1)  # one retry left: the re-run is the last attempt
    _claim_and_die(conn, last_attempt, job_id)
    t0 = time.time() + LATER
    fake_resend.fail_next(1, 408, "request_timeout")

    report = drain(connection=conn, settings=last_attempt, wall_clock=lambda: t0)
    assert (report.recovered, report.failed, len(fake_resend.requests)) == (1, 0, 1)
    assert _state(conn, job_id) == HELD
    record = read_record(conn.hget(f"rq:job:{job_id}", "meta"))
    assert record.get("maybe_sent") is True
    assert (record.get("error") or {}).get("status_code") == 408


def test_hold_is_settled_once_by_overlapping_recoveries(conn: redis.Redis, last_attempt: Settings) -> None:
    """HOLD's ZREM of the exhausted entry decides who settles it: a second store that got the
    same entry (a drain that overlapped) does nothing."""
    job_id = _enqueue(conn, last_attempt)
    _claim_and_die(conn, last_attempt, job_id)
    store = JobStore(conn, "emails", last_attempt)
    now = time.time() + LATER
    ((_, member),) = store.scripts.recover(now=now, limit=10, lease=30).exhausted
    assert store.hold_abandoned(job_id, member, now=now) is True
    assert store.hold_abandoned(job_id, member, now=now) is False
    assert _state(conn, job_id) == HELD
    assert read_record(conn.hget(f"rq:job:{job_id}", "meta")).get("attempts") == 1


# --- RQ's own cleanup of abandoned executions, with EmailJob ------------------------------------


def _rq_cleanup(conn: redis.Redis, *, job_class: type = EmailJob) -> None:
    """A VM worker's maintenance: RQ's StartedJobRegistry cleanup, past the entry's deadline."""
    StartedJobRegistry("emails", connection=conn, job_class=job_class, serializer=JSONSerializer).cleanup(
        timestamp=time.time() + LATER
    )


def test_rq_cleanup_with_email_job_holds_on_to_a_job_abandoned_on_its_last_attempt(
    real_conn: redis.Redis, last_attempt: Settings
) -> None:
    """RQ would fail it (AbandonedJobError); EmailJob's failure callback turns that into one more
    retry under its key, at the backoff cap, with the record saying Resend may have it."""
    job_id = _enqueue(real_conn, last_attempt)
    _claim_and_die(real_conn, last_attempt, job_id)
    configure_worker(last_attempt)
    before = time.time()
    _rq_cleanup(real_conn)
    assert _state(real_conn, job_id) == HELD
    due = real_conn.zscore("rq:scheduled:emails", job_id) or 0
    cap = last_attempt.email_backoff_cap_s
    assert before + cap / 2 <= due <= time.time() + cap + 1, "held at the backoff cap (jitter: half of it)"
    record = read_record(real_conn.hget(f"rq:job:{job_id}", "meta"))
    assert ((record.get("error") or {}).get("name"), record.get("maybe_sent")) == (ABANDONED, True)
    assert real_conn.hget(f"rq:job:{job_id}", "retries_left") == b"0"


def test_rq_cleanup_with_email_job_requeues_a_job_with_attempts_left_marked_maybe_sent(
    real_conn: redis.Redis, last_attempt: Settings
) -> None:
    """With attempts left RQ retries it, spending one (at the job's first retry interval), as the
    drain's recovery does; its record says Resend may have it, as RECOVER marks it."""
    job_id = _enqueue(real_conn, last_attempt, last=False)
    _claim_and_die(real_conn, last_attempt, job_id)
    configure_worker(last_attempt)
    _rq_cleanup(real_conn)
    assert _state(real_conn, job_id) == HELD, "retried, not failed"
    left = str(last_attempt.email_max_attempts - 2).encode()
    assert real_conn.hget(f"rq:job:{job_id}", "retries_left") == left
    assert read_record(real_conn.hget(f"rq:job:{job_id}", "meta")) == {"maybe_sent": True}


def test_rq_cleanup_with_email_job_fails_a_job_abandoned_as_its_window_closes_as_unknown(
    real_conn: redis.Redis, last_attempt: Settings
) -> None:
    job_id = _enqueue(real_conn, last_attempt)
    _claim_and_die(real_conn, last_attempt, job_id)
    _created_hours_ago(real_conn, job_id, CLOSING / 3600)
    configure_worker(last_attempt)
    _rq_cleanup(real_conn)
    assert real_conn.hget(f"rq:job:{job_id}", "status") == b"failed"
    assert real_conn.zscore("rq:failed:emails", job_id) is not None
    record = read_record(real_conn.hget(f"rq:job:{job_id}", "meta"))
    assert ((record.get("error") or {}).get("name"), record.get("maybe_sent")) == (OUTCOME_UNKNOWN, True)


def test_rq_cleanup_with_email_job_finishes_an_accepted_job_instead_of_failing_it(
    real_conn: redis.Redis, last_attempt: Settings, fake_resend: FakeResend
) -> None:
    """The worker died after recording Resend's acceptance, before RQ finished the job: RQ would
    fail it on its last attempt. With EmailJob it runs once more, finds the record, and is done
    without a request."""
    job_id = _enqueue(real_conn, last_attempt)
    _claim_and_die(real_conn, last_attempt, job_id)
    store = JobStore(real_conn, "emails", last_attempt)
    assert store.accept(job_id, worker_name="w", sent=1)
    configure_worker(last_attempt)
    _rq_cleanup(real_conn)
    assert real_conn.lrange("rq:queue:emails", 0, -1) == [job_id.encode()]
    assert real_conn.zcard("rq:failed:emails") == 0
    queue = Queue("emails", connection=real_conn, serializer=JSONSerializer, job_class=EmailJob)
    SimpleWorker([queue], connection=real_conn, serializer=JSONSerializer, job_class=EmailJob).work(
        burst=True
    )
    assert not real_conn.exists(f"rq:job:{job_id}")
    assert (real_conn.zcard("rq:failed:emails"), fake_resend.requests) == (0, [])


def test_rq_cleanup_with_email_job_retries_a_job_with_attempts_left_as_rq_does(
    real_conn: redis.Redis, settings: Settings
) -> None:
    job_id = _enqueue(real_conn, settings, last=False)
    _claim_and_die(real_conn, settings, job_id)
    _rq_cleanup(real_conn)
    assert real_conn.zcard("rq:failed:emails") == 0
    assert real_conn.hget(f"rq:job:{job_id}", "status") in (b"scheduled", b"queued")
    record = read_record(real_conn.hget(f"rq:job:{job_id}", "meta"))
    assert "error" not in record, "not held on: RQ's own retry, with no record of ours"


def test_rq_cleanup_with_the_stock_job_class_fails_it_as_abandoned(
    real_conn: redis.Redis, last_attempt: Settings
) -> None:
    """What a plain ``rq worker`` without ``--job-class emailqueue.EmailJob`` does (documented in
    the README and docs/RELIABILITY.md): RQ fails the job with AbandonedJobError."""
    from rq.job import Job

    job_id = _enqueue(real_conn, last_attempt)
    _claim_and_die(real_conn, last_attempt, job_id)
    _rq_cleanup(real_conn, job_class=Job)
    assert real_conn.hget(f"rq:job:{job_id}", "status") == b"failed"
