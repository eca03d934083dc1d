"""Fit a drain's per-send timeouts to its time budget.

A drain takes a job only if a send starting now could finish inside the budget that is left, and
a send can take its connect plus read timeout (``RESEND_CONNECT_TIMEOUT_S`` 5 s +
``RESEND_TIMEOUT_S`` 15 s by default). A budget shorter than that (``maxDuration`` 15 or 30)
would make every run stop at once with ``time_budget``, having sent nothing. So the timeouts are
kept while a send's worst case takes at most two thirds of the budget, and otherwise scaled
down, in proportion, to two thirds of it: the last third is when the run takes jobs. If even
that leaves less than a workable request, the drain refuses to start.
"""

from __future__ import annotations

from typing import Final

from ._exceptions import ConfigurationError
from ._settings import Settings

#: A send's worst case may take at most this share of the budget; a run takes jobs during the rest.
SEND_SHARE: Final = 2 / 3
#: Below these a request to Resend is not worth making (its latency is typically 0.1-0.5 s).
MIN_CONNECT_S: Final = 0.5
MIN_READ_S: Final = 1.0


def fit_send_timeouts(budget_s: float, connect_s: float, read_s: float) -> tuple[float, float]:
    """The (connect, read) timeouts a drain with ``budget_s`` seconds uses.

    Raises:
        ConfigurationError: the budget is too short for even the minimum timeouts.
    """
    room = budget_s * SEND_SHARE
    if connect_s + read_s <= room:
        return connect_s, read_s
    scale = room / (connect_s + read_s)
    connect, read = connect_s * scale, read_s * scale
    if connect < MIN_CONNECT_S or read < MIN_READ_S:
        total = connect_s + read_s
        needed = max(MIN_CONNECT_S * total / connect_s, MIN_READ_S * total / read_s) / SEND_SHARE
        raise ConfigurationError(
            f"the drain's time budget of {budget_s:g} s (DRAIN_TIME_BUDGET_S, or DRAIN_MAX_DURATION_S "
            f"minus 10 s) is too short for a send to Resend: scaled to fit, the timeouts "
            f"(RESEND_CONNECT_TIMEOUT_S={connect_s:g}, RESEND_TIMEOUT_S={read_s:g}) would drop below "
            f"{MIN_CONNECT_S:g} s to connect or {MIN_READ_S:g} s to read. Give the drain at least "
            f"{needed:.3g} s: raise DRAIN_MAX_DURATION_S (with maxDuration in vercel.json) or "
            "DRAIN_TIME_BUDGET_S"
        )
    return connect, read


def fit_to_budget(settings: Settings, budget_s: float) -> Settings:
    """``settings`` with the Resend timeouts fitted to a drain budget (the same object if they fit)."""
    connect, read = fit_send_timeouts(budget_s, settings.resend_connect_timeout_s, settings.resend_timeout_s)
    if (connect, read) == (settings.resend_connect_timeout_s, settings.resend_timeout_s):
        return settings
    return settings.model_copy(update={"resend_connect_timeout_s": connect, "resend_timeout_s": read})
