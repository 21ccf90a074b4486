"""A failed unit of work gives its lease up, naming the failure, and raises it again; when
the database cannot be told, ``LeaseKept`` says how long the lease still holds."""

from __future__ import annotations

import pytest

from fanout import retry
from fanout.stages import leases
from fanout.stages.leases import LeaseKept, describe


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    async def sleep(seconds: float) -> None:
        pass

    monkeypatch.setattr(retry.asyncio, "sleep", sleep)


async def test_a_failure_releases_the_lease_with_its_reason_and_is_raised_again() -> None:
    released: list[str] = []

    async def release(reason: str) -> None:
        released.append(reason)

    failure = RuntimeError("provider exploded")
    with pytest.raises(RuntimeError) as raised:
        await leases.give_up(release, failure, lease_seconds=60)
    assert raised.value is failure
    assert released == ["RuntimeError: provider exploded"]


async def test_a_release_that_fails_once_is_tried_again() -> None:
    tries: list[str] = []

    async def release(reason: str) -> None:
        tries.append(reason)
        if len(tries) == 1:
            raise ConnectionResetError("the database restarted")

    with pytest.raises(RuntimeError):
        await leases.give_up(release, RuntimeError("boom"), lease_seconds=60)
    assert len(tries) == 2


async def test_a_lease_that_cannot_be_given_up_is_kept_for_its_length() -> None:
    async def release(reason: str) -> None:
        raise ConnectionRefusedError("the database is away")

    failure = RuntimeError("boom")
    with pytest.raises(LeaseKept) as kept:
        await leases.give_up(release, failure, lease_seconds=42)
    assert kept.value.seconds == 42
    assert kept.value.cause is failure


def test_a_reason_names_the_error_type_and_is_bounded() -> None:
    assert describe(ValueError("bad")) == "ValueError: bad"
    assert len(describe(ValueError("x" * 5000))) == 1000


def test_a_kept_lease_is_described_by_what_caused_it() -> None:
    assert describe(LeaseKept(TimeoutError("slow"), 60)) == "TimeoutError: slow"
