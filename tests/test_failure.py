"""The failure record (emailqueue._failure): what its one reader makes of any meta a job may hold,
and what its writer stamps. Pure functions, no Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from emailqueue._failure import failure_record, key_window_start, read_record, requeue_record


def test_a_record_with_missing_or_mistyped_fields_reads_as_the_status_api_shows_it() -> None:
    """A record written by hand or by another version: the error always has a name, a message and
    an int status (or None); a string timestamp is kept; fields of the wrong type are dropped."""
    meta = {
        "emailqueue": {
            "error": {"status_code": "500"},
            "failed_at": "2026-01-02T03:04:05+00:00",
            "attempts": "3",
        },
        "other": 1,
    }
    assert read_record(json.dumps(meta)) == {
        "error": {"name": "unknown_error", "message": "", "status_code": None},
        "failed_at": "2026-01-02T03:04:05+00:00",
    }
    full = {"error": {"name": "validation_error", "message": "bad", "status_code": 422}, "attempts": 2}
    assert read_record({"emailqueue": full}) == full
    assert read_record(b"") == {} and read_record(b"not json") == {} and read_record(None) == {}


def test_a_counted_failure_is_stamped_with_an_aware_utc_time() -> None:
    before = datetime.now(UTC)
    record = failure_record(None, name="internal_server_error", message="boom", status_code=500)
    stamped = datetime.fromisoformat(record["failed_at"] or "")
    assert stamped.utcoffset() == timedelta(0)  # UTC, whatever the host's zone
    assert before <= stamped <= datetime.now(UTC)
    assert record["attempts"] == 1
    kept = failure_record({"emailqueue": record}, name="x", message="y", count_attempt=False)
    assert kept["failed_at"] == record["failed_at"] and kept["attempts"] == 1  # not counted: unchanged


def test_a_failure_record_says_resend_may_have_it_only_when_told() -> None:
    """A rejected recipient, an unreadable job, a worker without a key: nothing was sent, so
    nothing tells the operator or a requeue that Resend may have the email."""
    record = failure_record(None, name="rejected_recipient", message="bad address", status_code=422)
    assert "maybe_sent" not in record
    assert failure_record(None, name="timeout", message="t", maybe_sent=True)["maybe_sent"] is True


def test_a_requeue_counts_the_attempts_as_past_ones_and_keeps_that_resend_may_have_it() -> None:
    """The key's earlier sends still count after a requeue (its next ambiguous failure holds on,
    and no send is made as the key's window closes), unless the requeue is forced."""
    meta = {
        "emailqueue": {
            "error": {"name": "internal_server_error", "message": "boom", "status_code": 500},
            "attempts": 3,
            "requeued": 1,
            "past_attempts": 2,
            "maybe_sent": True,
        }
    }
    assert requeue_record(meta, now=5000.7) == {
        "error": None,
        "attempts": 0,
        "requeued": 2,
        "past_attempts": 5,
        "maybe_sent": True,
    }
    assert requeue_record(meta, now=5000.7, maybe_sent=False) == {
        "error": None,
        "attempts": 0,
        "requeued": 2,
        "past_attempts": 5,
        "window_from": 5000,
    }
    assert requeue_record(None, now=5000.7) == {
        "error": None,
        "attempts": 0,
        "requeued": 1,
        "past_attempts": 0,
        "window_from": 5000,
    }


def test_a_key_window_starts_at_creation_or_at_a_requeue_that_started_over() -> None:
    """A requeue of a job Resend may not have restarts the window its later sends are measured
    in; a requeue that keeps ``maybe_sent`` keeps the window it had (its earlier sends count)."""
    assert key_window_start(None, 100.0) == 100.0
    fresh = {"emailqueue": requeue_record(None, now=9000.0)}
    assert key_window_start(fresh, 100.0) == 9000.0
    assert key_window_start(fresh, 9500.5) == 9500.5, "the later of the two"
    maybe = {"emailqueue": {**requeue_record(None, now=9000.0), "maybe_sent": True, "attempts": 1}}
    kept = {"emailqueue": requeue_record(maybe, now=20000.0)}
    assert kept["emailqueue"]["window_from"] == 9000 and key_window_start(kept, 100.0) == 9000.0
    assert key_window_start({"emailqueue": {"window_from": "junk"}}, 100.0) == 100.0
