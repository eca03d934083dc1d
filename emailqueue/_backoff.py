"""Retry policy as a pure function of the attempt number (like dramatiq's ``compute_backoff``)."""

from __future__ import annotations

import math
import random


def compute_backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> int:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    Exponential (``base * 2**(attempt-1)``, capped at ``cap``) with "equal jitter": the wait is
    uniform in ``[d/2, d]``, so retries of many jobs spread out but never come back early.
    A ``retry_after`` from the server wins when it is larger. Returns whole seconds, rounded
    up, because RQ schedules retries in whole seconds; and since RQ's ScheduledJobRegistry also
    truncates the due time to the second, a ``retry_after`` gets one more second so the retry
    can never come back before the server said.

    Args:
        attempt: which retry this is, starting at 1.
        base: the first delay before jitter.
        cap: the longest delay before jitter.
        retry_after: what the server asked for, if anything.
        rng: the random source (tests pass a seeded one).
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    delay = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, math.ceil(retry_after) + 1)
    whole: int = math.ceil(delay)
    return max(1, whole)
