"""A token bucket: ``rate`` tokens a second, at most ``burst`` saved up, on a clock the test
moves by hand."""

from __future__ import annotations

import pytest

from fanout.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_gives_its_burst_then_says_how_long_to_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(0.1)


def test_tokens_come_back_at_the_rate_and_never_past_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    for _ in range(3):
        bucket.try_take()
    clock.now += 60  # far longer than it takes to fill up
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() > 0


def test_a_rate_change_counts_the_tokens_earned_so_far_at_the_old_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    for _ in range(5):
        bucket.try_take()
    clock.now += 0.2  # two tokens at 10/s
    bucket.rate = 1
    assert bucket.try_take(2) == 0.0
    assert bucket.try_take() == pytest.approx(1.0)


def test_a_bucket_that_could_never_give_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        TokenBucket(rate=0, burst=1)
