"""The job store's state changes one at a time, with exact results: what each method returns and
leaves in Redis (fields, registries, RQ's result stream), and which settle in one transaction.

The scenario tests are in test_store.py and test_store_packs.py. Runs on both tiers (fakeredis
and the suite's real server), but for the transaction counts, which only a real server reports.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import zlib

import pytest
import redis

from emailqueue import PermanentSendError, RetryableSendError, Settings, send_email
from emailqueue._failure import read_record
from emailqueue._now_attempt import new_claim
from emailqueue._now_scripts import NowClaimed
from emailqueue._payload import decode_job_data
from emailqueue._retry import OUTCOME_UNKNOWN
from emailqueue._scripts import Claimed
from emailqueue._store import JobStore

#: Past the hold-on deadline of a job created now (its key's window is closing).
WINDOW_CLOSED = 23 * 3600.0


@pytest.fixture
def store(conn: redis.Redis, settings: Settings) -> JobStore:
    return JobStore(conn, "emails", settings)


def _send(store: JobStore, to: str = "a@example.com") -> str:
    return str(send_email(to=to, subject="s", text="t", connection=store.conn, settings=store.settings))


def _claimed(store: JobStore, to: str = "a@example.com") -> Claimed:
    """One email, queued then claimed by a drain."""
    job_id = _send(store, to)
    (row,) = store.claim(n=1, now=time.time(), execution_prefix="d-", worker="w", grace=30)
    assert row.job_id == job_id
    return row


def _meta(store: JobStore, job_id: str) -> dict[str, object]:
    return dict(json.loads(store.conn.hget(f"rq:job:{job_id}", "meta") or b"{}"))


# --- the store's RQ queue ------------------------------------------------------------------------


def test_the_stores_queue_reads_the_jobs_it_holds_as_json(store: JobStore) -> None:
    """Jobs are JSON (what a VM worker and ``rq info`` read), and so is the store's queue."""
    job_id = _send(store)
    job = store.queue.fetch_job(job_id)
    assert job is not None and job.kwargs == decode_job_data(store.conn.hget(f"rq:job:{job_id}", "data"))


# --- created_at ----------------------------------------------------------------------------------


def test_created_at_is_zero_for_a_job_without_one_or_with_garbage(store: JobStore) -> None:
    job_id = _send(store)
    assert store.created_at(job_id) == pytest.approx(time.time(), abs=60)
    assert store.created_at("no-such-job") == 0.0
    store.conn.hset(f"rq:job:{job_id}", "created_at", "not a time")
    assert store.created_at(job_id) == 0.0


# --- fail and hold_abandoned ---------------------------------------------------------------------


def test_fail_adds_its_record_to_the_meta_it_is_given(store: JobStore) -> None:
    """The earlier record (attempts, ``maybe_sent``) and foreign meta keys are kept."""
    row = _claimed(store)
    earlier = {"emailqueue": {"attempts": 1, "maybe_sent": True}, "app": {"x": 1}}
    assert store.fail(row.job_id, name="bad_payload", message="m", member=row.member, meta=earlier)
    meta = _meta(store, row.job_id)
    assert meta["app"] == {"x": 1}
    record = read_record(meta)
    assert (record.get("attempts"), record.get("maybe_sent")) == (2, True)
    assert record.get("error") == {"name": "bad_payload", "message": "m", "status_code": None}


def test_a_failure_writes_rqs_result_with_no_worker_and_the_reason(store: JobStore) -> None:
    """RQ's tools read the failure in ``rq:results:<id>``: type FAILED, the reason compressed as
    RQ stores it, and no worker's name (a drain is no RQ worker)."""
    row = _claimed(store)
    store.fail(row.job_id, name="bad_payload", message="unreadable", member=row.member)
    ((_id, fields),) = store.conn.xrevrange(f"rq:results:{row.job_id}", "+", "-", count=1)
    reason = base64.b64encode(zlib.compress(b"bad_payload: unreadable"))
    assert fields == {b"type": b"2", b"worker_name": b"", b"exc_string": reason}


def test_an_abandoned_job_failed_as_its_window_closes_keeps_its_meta_and_says_so(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Past its key's window, ``hold_abandoned`` fails the job as ``outcome_unknown`` (returns
    False: it will not be resent), keeps its foreign meta keys, and logs which job and why."""
    caplog.set_level(logging.WARNING, logger="emailqueue")
    row = _claimed(store)
    store.conn.hset(f"rq:job:{row.job_id}", "meta", json.dumps({"app": {"x": 1}}))
    assert store.hold_abandoned(row.job_id, row.member, now=time.time() + WINDOW_CLOSED) is False
    meta = _meta(store, row.job_id)
    assert meta["app"] == {"x": 1}
    assert (read_record(meta).get("error") or {}).get("name") == OUTCOME_UNKNOWN
    assert store.conn.zscore("rq:failed:emails", row.job_id) is not None
    assert [r.getMessage() for r in caplog.records] == [
        f"job {row.job_id}: abandoned as its key's window closes: failed ({OUTCOME_UNKNOWN})"
    ]


# --- requeue -------------------------------------------------------------------------------------


def _fail_unknown(store: JobStore) -> str:
    row = _claimed(store, "u@example.com")
    assert store.hold_abandoned(row.job_id, row.member, now=time.time() + WINDOW_CLOSED) is False
    return row.job_id


def _fail_definitely(store: JobStore, meta: object = None) -> str:
    row = _claimed(store, "d@example.com")
    assert store.fail(row.job_id, name="validation_error", message="m", member=row.member, meta=meta)
    return row.job_id


def test_requeue_leaves_an_outcome_unknown_job_failed_unless_forced_and_goes_on(store: JobStore) -> None:
    """Not forced (the default), an ``outcome_unknown`` job needs force; the next ids are still
    requeued."""
    unknown = _fail_unknown(store)
    refused = _fail_definitely(store)
    requeued, missing, delivered, needs_force = store.requeue(
        [unknown, refused], enqueued_at="2026-01-01T00:00:00Z"
    )
    assert (requeued, missing, delivered, needs_force) == ([refused], [], [], [unknown])
    assert store.conn.lrange("rq:queue:emails", 0, -1) == [refused.encode()]
    assert store.conn.zscore("rq:failed:emails", unknown) is not None


def test_requeue_keeps_a_jobs_maybe_sent_when_it_did_not_fail_as_outcome_unknown(store: JobStore) -> None:
    """A job whose earlier send was ambiguous, then refused: requeued, its record still says
    Resend may have it (so it is never sent once its key's window is closing)."""
    job_id = _fail_definitely(store, meta={"emailqueue": {"attempts": 1, "maybe_sent": True}})
    assert store.requeue([job_id], enqueued_at="2026-01-01T00:00:00Z")[0] == [job_id]
    record = read_record(store.conn.hget(f"rq:job:{job_id}", "meta"))
    assert (record.get("maybe_sent"), record.get("past_attempts"), record.get("error")) == (True, 2, None)


# --- claims --------------------------------------------------------------------------------------


def test_claim_queued_replies_claimed_with_no_wait_and_the_jobs_data(store: JobStore) -> None:
    job_id = _send(store)
    claimed = store.claim_queued(new_claim(job_id, store.settings, time.time()))
    assert claimed == NowClaimed(1, 0.0, data=store.conn.hget(f"rq:job:{job_id}", "data"))
    assert store.conn.hget(f"rq:job:{job_id}", "status") == b"started"


def test_a_pack_claims_single_rows_carry_the_jobs_meta(conn: redis.Redis, settings: Settings) -> None:
    """A job attempted before goes the single way with its meta (the drain reads ``maybe_sent``
    there, to never send a job whose key's window is closing)."""
    store = JobStore(conn, "emails", settings.model_copy(update={"email_pack": True}))
    job_id = _send(store)
    meta = json.dumps({"emailqueue": {"attempts": 1, "maybe_sent": True}})
    store.conn.hset(f"rq:job:{job_id}", "meta", meta)
    rows, packs = store.pack_claim(
        units=1, now=time.time(), execution_prefix="d-", worker="w", grace=30, lease=90, size=100
    )
    assert packs == [] and [(r.job_id, r.meta, r.accepted) for r in rows] == [(job_id, meta.encode(), False)]


# --- packs ---------------------------------------------------------------------------------------


def test_a_pack_retry_marks_it_maybe_sent_only_when_told(store: JobStore) -> None:
    pack_store = JobStore(store.conn, "emails", store.settings.model_copy(update={"email_pack": True}))
    for i in range(2):
        _send(pack_store, f"u{i}@example.com")
    _, (pack,) = pack_store.pack_claim(
        units=1, now=time.time(), execution_prefix="d-", worker="w", grace=30, lease=90, size=100
    )
    key = pack_store.pack_keys.pack_prefix + pack.pack_id
    error = RetryableSendError("busy", name="rate_limit_exceeded", status_code=429)
    pack_store.pack_retry(pack, due=1.0, error=error)
    assert store.conn.hget(key, "unknown") is None
    pack_store.pack_retry(pack, due=2.0, error=error, maybe_sent=True)
    assert store.conn.hget(key, "unknown") == b"1"


# --- transactions (a real server counts them) ----------------------------------------------------


def _transactions(conn: redis.Redis) -> int:
    """EXECs the server has run so far."""
    return int(conn.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))


def test_a_retry_and_each_pack_settlement_is_one_transaction(
    real_conn: redis.Redis, settings: Settings
) -> None:
    """No other client sees half of one: a retry leaves the started registry as it is
    scheduled; a sent pack is dropped as its jobs are deleted (an orphan sweep in between would
    requeue them); a pack retry's attempts, error and due time change together; a failed pack
    is dropped from the due packs and its hash at once."""
    store = JobStore(real_conn, "emails", settings.model_copy(update={"email_pack": True}))
    row = _claimed(store)
    before = _transactions(real_conn)
    assert store.retry_or_fail(row, RetryableSendError("busy", name="internal_server_error", status_code=500))
    assert _transactions(real_conn) - before == 1

    for i in range(4):
        _send(store, f"u{i}@example.com")
    _, (sent, retried) = store.pack_claim(
        units=2, now=time.time(), execution_prefix="d-", worker="w", grace=30, lease=90, size=2
    )
    error = PermanentSendError("invalid", name="validation_error", status_code=422)
    for settle in (
        lambda: store.pack_ack(sent, [], done=list(sent.ids)),
        lambda: store.pack_retry(retried, due=1.0, error=error),
        lambda: store.pack_fail(retried, error),
    ):
        before = _transactions(real_conn)
        settle()
        assert _transactions(real_conn) - before == 1
    assert not real_conn.exists(*[f"rq:job:{job_id}" for job_id in sent.ids])
    assert real_conn.zcard(store.pack_keys.packs) == 0
