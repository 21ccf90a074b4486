"""The one retry schedule: delays double from ``first`` up to ``cap``, and ``retrying``
tries a call until it returns, raising the last failure once the tries are spent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from fanout import retry
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
