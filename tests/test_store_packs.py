"""The job store's pack state changes (emailqueue._store, ``pack_*``), one at a time: what each
leaves in Redis for the next drain. The drain-level behaviour is in test_pack.py. Runs on both
tiers (fakeredis and the suite's real server)."""

from __future__ import annotations

import time

import pytest
import redis

from emailqueue import RetryableSendError, Settings, drain, send_email
from emailqueue._exceptions import PermanentSendError
from emailqueue._failure import read_record
from emailqueue._lua_common import ACCEPTED_FIELD
from emailqueue._pack_scripts import PackRow
from emailqueue._store import JobStore
from emailqueue.testing import FakeResend


@pytest.fixture
def psettings(settings: Settings) -> Settings:
    return settings.model_copy(update={"email_pack": True})


@pytest.fixture
def store(conn: redis.Redis, psettings: Settings) -> JobStore:
    return JobStore(conn, "emails", psettings)


def _one_pack(store: JobStore, n: int = 3) -> PackRow:
    for i in range(n):
        send_email(
            to=f"u{i}@example.com", subject="Hi", text="x", connection=store.conn, settings=store.settings
        )
    singles, packs = store.pack_claim(
        units=1, now=time.time(), execution_prefix="d-", worker="w", grace=30, lease=90, size=100
    )
    assert singles == [] and len(packs) == 1
    return packs[0]


def test_a_pack_key_names_it_as_a_pack(store: JobStore) -> None:
    """README: a pack goes out under its own key, ``emailqueue-pack-...``, never a job's."""
    pack = _one_pack(store)
    assert pack.key.startswith("emailqueue-pack-") and pack.key == f"emailqueue-pack-{pack.pack_id}"


def test_a_packing_drain_does_not_send_a_job_resend_already_accepted(
    conn: redis.Redis, psettings: Settings, fake_resend: FakeResend
) -> None:
    """A job back in the queue with its acceptance recorded (a VM worker's send went through,
    RQ's success handling did not) is claimed the single way and finished, not sent again."""
    accepted = send_email(to="a@example.com", subject="Hi", text="x", connection=conn, settings=psettings)
    conn.hset(f"rq:job:{accepted}", ACCEPTED_FIELD, '{"at": "2026-01-01T00:00:00Z", "sent": 1}')
    report = drain(connection=conn, settings=psettings)
    assert (report.sent, report.failed, fake_resend.requests) == (0, 0, [])
    assert not conn.exists(f"rq:job:{accepted}")


def test_a_pack_retry_counts_one_attempt_keeps_the_error_and_never_revives_a_settled_pack(
    store: JobStore,
) -> None:
    pack = _one_pack(store)
    key = store.pack_keys.pack_prefix + pack.pack_id
    long = RetryableSendError("x" * 400, name="internal_server_error", status_code=500)
    store.pack_retry(pack, due=123.0, error=long)
    assert store.conn.hget(key, "attempts") == b"1"
    error = (store.conn.hget(key, "error") or b"").decode()
    assert error.startswith("internal_server_error: 500 internal_server_error: xxx") and len(error) == 300
    assert store.conn.zscore(store.pack_keys.packs, pack.pack_id) == 123.0
    store.pack_retry(pack, due=456.0, error=long, spend=False)  # no attempt spent (a local wait)
    assert store.conn.hget(key, "attempts") == b"1"
    store.conn.zrem(store.pack_keys.packs, pack.pack_id)  # another drain settled it meanwhile
    store.pack_retry(pack, due=789.0, error=long)
    store.pack_release([pack], now=789.0)
    assert store.conn.zscore(store.pack_keys.packs, pack.pack_id) is None


def test_released_packs_are_due_at_once(store: JobStore) -> None:
    pack = _one_pack(store)
    store.pack_release([pack], now=42.0)
    assert store.conn.zscore(store.pack_keys.packs, pack.pack_id) == 42.0
    (taken,) = store.pack_take(now=42.0, limit=10, lease=90)
    assert (taken.pack_id, taken.ids, taken.key) == (pack.pack_id, pack.ids, pack.key)


def test_a_pack_body_is_stored_once_and_taken_back_as_it_was(store: JobStore) -> None:
    pack = _one_pack(store)
    store.pack_sending({pack.pack_id: '[{"to": "first"}]'})
    store.pack_sending({pack.pack_id: '[{"to": "second"}]'})  # a later run keeps the first
    store.pack_release([pack], now=0.0)
    (taken,) = store.pack_take(now=0.0, limit=10, lease=90)
    assert taken.body == '[{"to": "first"}]'


def test_a_failed_pack_fails_each_job_with_the_error_and_is_dropped(store: JobStore) -> None:
    pack = _one_pack(store)
    error = PermanentSendError("The `from` field is invalid", name="validation_error", status_code=422)
    assert store.pack_fail(pack, error) == pack.ids
    for job_id in pack.ids:
        assert store.conn.hget(f"rq:job:{job_id}", "status") == b"failed"
        assert read_record(store.conn.hget(f"rq:job:{job_id}", "meta"))["error"] == {
            "name": "validation_error",
            "message": "422 validation_error: The `from` field is invalid",
            "status_code": 422,
        }
    assert store.conn.zscore(store.pack_keys.packs, pack.pack_id) is None
    assert not store.conn.exists(store.pack_keys.pack_prefix + pack.pack_id)


def test_a_failed_pack_keeps_300_characters_of_a_long_reason(store: JobStore) -> None:
    pack = _one_pack(store, n=2)
    store.pack_fail(pack, PermanentSendError("y" * 1000, name="validation_error", status_code=422))
    message = read_record(store.conn.hget(f"rq:job:{pack.ids[0]}", "meta"))["error"]["message"]
    assert len(message) == 300 and message.startswith("422 validation_error: yyy")


def test_a_pack_taken_from_a_drain_that_died_mid_send_is_one_resend_may_have(store: JobStore) -> None:
    """Marked ``sending`` just before its request, then its drain died: the drain that takes it
    (past the lease) gets it as ``maybe_sent``, and the mark is kept in the pack for good."""
    pack = _one_pack(store)
    key = store.pack_keys.pack_prefix + pack.pack_id
    store.pack_sending({pack.pack_id: '{"ids": [], "emails": []}'})
    assert store.conn.hget(key, "sending") == b"1"
    (taken,) = store.pack_take(now=time.time() + 1000, limit=10, lease=90)
    assert taken.maybe_sent is True
    assert (store.conn.hget(key, "unknown"), store.conn.hget(key, "sending")) == (b"1", None)
    store.pack_release([taken], now=0.0)
    (again,) = store.pack_take(now=0.0, limit=10, lease=90)
    assert again.maybe_sent is True


def test_a_pack_settled_after_its_request_is_not_taken_as_maybe_sent(store: JobStore) -> None:
    """A definite failure (a 408: nothing processed) settles the request: the retry is taken
    without the mark. Packs released before any request were never marked."""
    pack = _one_pack(store)
    store.pack_sending({pack.pack_id: "[]"})
    store.pack_retry(pack, due=10.0, error=RetryableSendError("t", name="request_timeout", status_code=408))
    (taken,) = store.pack_take(now=10.0, limit=10, lease=90)
    assert taken.maybe_sent is False
    assert store.conn.hget(store.pack_keys.pack_prefix + pack.pack_id, "sending") is None
    other = _one_pack(store)
    store.pack_release([other], now=20.0)
    (released,) = store.pack_take(now=20.0, limit=10, lease=90)
    assert (released.pack_id, released.maybe_sent) == (other.pack_id, False)


def test_marking_a_pack_settled_meanwhile_writes_no_stray_hash(store: JobStore) -> None:
    """Another drain settled the pack after this one's lease lapsed: nothing is written for it."""
    pack = _one_pack(store)
    key = store.pack_keys.pack_prefix + pack.pack_id
    store.conn.delete(key)
    store.pack_sending({pack.pack_id: "[]", "gone": ""})
    assert not store.conn.exists(key) and not store.conn.exists(store.pack_keys.pack_prefix + "gone")
