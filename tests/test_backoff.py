import random

import pytest

from emailqueue._backoff import compute_backoff


def test_backoff_grows_exponentially_within_jitter_window() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80)]:
        delays = {compute_backoff(attempt, base=10, cap=3600, rng=rng) for _ in range(200)}
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert len(delays) > 1  # jitter spreads retries


def test_backoff_is_capped() -> None:
    assert compute_backoff(40, base=10, cap=60, rng=random.Random(0)) <= 60
    assert compute_backoff(10_000, base=10, cap=60, rng=random.Random(0)) <= 60


def test_larger_retry_after_wins_and_smaller_does_not() -> None:
    # RQ truncates due times to the second, so a retry-after gets one more second.
    assert compute_backoff(1, base=10, cap=60, retry_after=300, rng=random.Random(0)) == 301
    assert compute_backoff(3, base=10, cap=60, retry_after=1, rng=random.Random(0)) >= 20


def test_backoff_is_whole_seconds_never_zero() -> None:
    assert compute_backoff(1, base=0.001, cap=0.001, rng=random.Random(0)) == 1
    assert compute_backoff(1, base=1, cap=1, retry_after=2.2, rng=random.Random(0)) == 4


def test_attempt_starts_at_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        compute_backoff(0, base=1, cap=1)
