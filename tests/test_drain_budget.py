"""A drain is never silently useless: its per-send timeouts fit its time budget, or it refuses to
start, naming the variables.

Fact (docs/SEND_NOW.md, drain budget): a send can take its connect plus read timeout (5 + 15 s
by default); a drain takes a job only if that fits in the budget left, and the budget is
``maxDuration`` minus 10 s (at least half of it). Before the fit, maxDuration 10, 15 and 30
sent nothing at all.
"""

from __future__ import annotations

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from emailqueue import ConfigurationError, Settings, drain, send_email
from emailqueue._budget import MIN_CONNECT_S, MIN_READ_S, SEND_SHARE, fit_send_timeouts, fit_to_budget
from emailqueue._constants import META_KEY
from emailqueue.testing import FakeResend

MAX_DURATIONS = (10, 15, 30, 60, 300)


def test_timeouts_that_fit_are_kept() -> None:
    assert fit_send_timeouts(50, 5, 15) == (5, 15)
    assert fit_send_timeouts(30, 5, 15) == (5, 15)  # exactly two thirds


@pytest.mark.parametrize("budget", [5.0, 7.5, 20.0, 29.9])
def test_timeouts_that_do_not_fit_are_scaled_in_proportion_to_two_thirds_of_the_budget(budget: float) -> None:
    connect, read = fit_send_timeouts(budget, 5, 15)
    assert connect + read == pytest.approx(budget * SEND_SHARE)
    assert read == pytest.approx(3 * connect)
    assert connect >= MIN_CONNECT_S and read >= MIN_READ_S


def test_a_budget_too_short_for_any_send_is_refused_naming_the_variables() -> None:
    with pytest.raises(ConfigurationError) as caught:
        fit_send_timeouts(2.5, 5, 15)
    message = str(caught.value)
    for variable in (
        "DRAIN_MAX_DURATION_S",
        "DRAIN_TIME_BUDGET_S",
        "RESEND_TIMEOUT_S",
        "RESEND_CONNECT_TIMEOUT_S",
    ):
        assert variable in message
    assert "at least 3 s" in message


def test_fit_to_budget_returns_the_same_settings_when_nothing_changes(settings: Settings) -> None:
    assert fit_to_budget(settings, 600) is settings
    fitted = fit_to_budget(
        settings.model_copy(update={"resend_timeout_s": 15, "resend_connect_timeout_s": 5}), 7.5
    )
    assert (fitted.resend_connect_timeout_s, fitted.resend_timeout_s) == (1.25, 3.75)


@pytest.mark.parametrize("max_duration", MAX_DURATIONS)
def test_the_drain_sends_at_every_max_duration(
    max_duration: int, conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    deployed = settings.model_copy(
        update={
            "drain_max_duration_s": float(max_duration),
            "drain_time_budget_s": None,
            "resend_timeout_s": 15.0,  # the defaults: 20 s for one send at worst
            "resend_connect_timeout_s": 5.0,
        }
    )
    for i in range(6):
        send_email(to=f"u{i}@example.com", subject="Hi", text="x", connection=conn, settings=deployed)
    report = drain(connection=conn, settings=deployed)
    print(f"\nmaxDuration {max_duration}: budget {deployed.time_budget_s:g} s, sent {report.sent}")
    assert (report.sent, report.stopped, report.remaining) == (6, "empty", 0)
    assert len(fake_resend.accepted) == 6


def test_a_drain_with_too_short_a_budget_refuses_before_taking_a_job(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    short = settings.model_copy(
        update={"drain_max_duration_s": 5.0, "resend_timeout_s": 15.0, "resend_connect_timeout_s": 5.0}
    )
    send_email(to="u@example.com", subject="Hi", text="x", connection=conn, settings=short)
    with pytest.raises(ConfigurationError, match="DRAIN_MAX_DURATION_S"):
        drain(connection=conn, settings=short)
    assert conn.llen("rq:queue:emails") == 1 and conn.zcard("rq:wip:emails") == 0
    assert fake_resend.requests == []


def test_the_fitted_read_timeout_is_the_one_the_drain_sends_with(
    conn: redis.Redis, settings: Settings, fake_resend: FakeResend
) -> None:
    """Budget 3 s, timeouts 2 + 4 s: fitted to 0.67 + 1.33 s. Resend replies after 3 s, which
    the configured 4 s read timeout would wait for; the fitted one gives up first."""
    tight = settings.model_copy(update={"resend_timeout_s": 4.0, "resend_connect_timeout_s": 2.0})
    job_id = send_email(to="u@example.com", subject="Hi", text="x", connection=conn, settings=tight)
    fake_resend.timeout_after_accept(1, 3.0)
    report = drain(connection=conn, settings=tight, time_budget=3.0)
    assert (report.sent, report.retrying) == (0, 1)
    record = Job.fetch(job_id, connection=conn, serializer=JSONSerializer).meta[META_KEY]
    assert record["error"]["name"] == "timeout"
