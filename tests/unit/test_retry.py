"""The one retry schedule: delays double from ``first`` up to ``cap``, and ``retrying``
tries a call until it returns, raising the last failure once the tries are spent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from fanout import retry
from fanout.providers.h2.client import REOPEN
from fanout.retry import Backoff


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sleeps ``retrying`` asked for, without sleeping."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(retry.asyncio, "sleep", sleep)
    return asked


def test_delays_double_from_first_and_stop_at_the_cap() -> None:
    assert Backoff(first=0.25, cap=4.0).delays(7) == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_delay_after_very_many_failures_is_the_cap_not_an_overflow() -> None:
    assert Backoff(first=1.0, cap=60.0).delay(10_000) == 60.0


def test_the_lease_release_schedule_fits_a_database_restart_in_a_few_seconds() -> None:
    assert sum(retry.RELEASE_LEASE.delays(retry.RELEASE_LEASE_TRIES)) == pytest.approx(5.75)


def test_jitter_draws_each_delay_between_its_share_and_the_schedule() -> None:
    backoff = Backoff(first=1.0, cap=30.0, jitter=0.5)
    for attempt, longest in enumerate([1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], 1):
        drawn = [backoff.delay(attempt) for _ in range(200)]
        assert backoff.shortest(attempt) == longest / 2 and backoff.longest(attempt) == longest
        assert all(longest / 2 <= d <= longest for d in drawn)
        assert len(set(drawn)) > 100  # spread, not one value: clients that failed together part


def test_without_jitter_a_delay_is_the_schedule_itself() -> None:
    backoff = Backoff(first=0.25, cap=4.0)
    assert [backoff.delay(n) for n in (1, 3, 9)] == [0.25, 1.0, 4.0]
    assert backoff.shortest(3) == backoff.longest(3) == 1.0


def test_a_push_service_that_is_down_is_tried_again_within_its_documented_schedule() -> None:
    """README and docs/architecture.md: 1, 2, 4 … 30 s apart, each up to half less."""
    assert [REOPEN.longest(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert [REOPEN.shortest(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 15, 15]


async def test_retrying_returns_once_the_call_succeeds(waits: list[float]) -> None:
    failures = [ConnectionError("down"), ConnectionError("still down")]

    async def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    result = await retrying_call(call, tries=5)
    assert result == "done"
    assert waits == [0.25, 0.5]


async def test_retrying_raises_the_last_failure_when_the_tries_are_spent(
    waits: list[float],
) -> None:
    attempts = 0

    async def call() -> str:
        nonlocal attempts
        attempts += 1
        raise ConnectionError(f"attempt {attempts}")

    with pytest.raises(ConnectionError, match="attempt 3"):
        await retrying_call(call, tries=3)
    assert waits == [0.25, 0.5]


async def test_retrying_does_not_catch_what_it_was_not_asked_to(waits: list[float]) -> None:
    async def call() -> str:
        raise KeyError("a bug, not an outage")

    with pytest.raises(KeyError):
        await retrying_call(call, tries=5)
    assert waits == []


async def retrying_call(call: Callable[[], Awaitable[str]], *, tries: int) -> str:
    return await retry.retrying(
        call,
        backoff=Backoff(first=0.25, cap=4.0),
        tries=tries,
        on=(ConnectionError,),
        what="a test call",
    )
