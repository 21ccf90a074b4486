"""A credential not yet seen working sends its probe alone before the other senders start
(issue #22: a herd of one waiter per device of each new app's first batch)."""

from __future__ import annotations

import asyncio
from typing import Any

from fanout.providers.base import Device, Outcome, OutcomeKind, config_error
from fanout.providers.breaker import BreakerState, CircuitBreaker
from fanout.providers.http2 import Http2Provider
from fanout.providers.transport import AdaptiveLimit
from fanout.queue.messages import Device as WireDevice


class Fake(Http2Provider[bytes]):
    name = "fake"
    platforms = frozenset({"fake"})

    def __init__(self, answer: Outcome) -> None:
        super().__init__(client=None, limit=AdaptiveLimit(1e9, 500))  # type: ignore[arg-type]
        self.answer = answer
        self.sent: list[int] = []
        self.in_flight = self.most_in_flight_during_first = 0

    def prepare(self, notification: Any) -> bytes:
        return b""

    async def send_one(self, prepared: bytes, device: Device) -> Outcome:
        self.sent.append(device.id)
        self.in_flight += 1
        await asyncio.sleep(0.01)
        if len(self.sent) == 1:
            self.most_in_flight_during_first = self.in_flight
        self.in_flight -= 1
        return self.answer


def devices(count: int) -> list[WireDevice]:
    return [WireDevice(i, "fake", f"t{i}") for i in range(count)]


def test_the_probe_goes_alone_and_no_sender_waits_for_it(monkeypatch: Any) -> None:
    waits = 0
    admit = CircuitBreaker.admit

    async def counted(self: CircuitBreaker) -> Any:
        nonlocal waits
        waits += 1
        return await admit(self)

    monkeypatch.setattr(CircuitBreaker, "admit", counted)
    provider = Fake(Outcome(OutcomeKind.OK))
    outcomes = asyncio.run(provider.send(None, devices(300)))  # type: ignore[arg-type]
    assert [o.kind for o in outcomes] == [OutcomeKind.OK] * 300
    assert sorted(provider.sent) == list(range(300)) and provider.sent[0] == 0
    assert provider.most_in_flight_during_first == 1
    assert waits == 0
    assert provider.breakers[provider.credential(WireDevice(0, "fake", ""))].state is (
        BreakerState.CLOSED
    )
    # Closed now: the next call starts every sender at once.
    again = asyncio.run(provider.send(None, devices(50)))  # type: ignore[arg-type]
    assert len(again) == 50 and provider.most_in_flight_during_first == 1


def test_a_refused_probe_holds_the_rest_without_sending_them() -> None:
    provider = Fake(config_error("fake", "403 InvalidProviderToken"))
    outcomes = asyncio.run(provider.send(None, devices(100)))  # type: ignore[arg-type]
    assert provider.sent == [0]
    assert {o.kind for o in outcomes} == {OutcomeKind.HELD}


def test_concurrent_calls_on_a_new_credential_still_send_one_probe() -> None:
    provider = Fake(Outcome(OutcomeKind.OK))

    async def both() -> list[list[Outcome]]:
        return await asyncio.gather(
            *(provider.send(None, devices(40)) for _ in range(6))  # type: ignore[arg-type]
        )

    results = asyncio.run(both())
    assert all(o.kind is OutcomeKind.OK for r in results for o in r)
    assert provider.most_in_flight_during_first == 1  # the others waited for its answer
    assert len(provider.sent) == 240


def test_a_batch_of_many_renderings_sends_one_probe_and_no_sender_waits(monkeypatch: Any) -> None:
    """send_groups: six locale groups of a new credential's batch, one probe (not one a
    group, five of them parked on the first's answer)."""
    waits = 0
    admit = CircuitBreaker.admit

    async def counted(self: CircuitBreaker) -> Any:
        nonlocal waits
        waits += 1
        return await admit(self)

    monkeypatch.setattr(CircuitBreaker, "admit", counted)
    provider = Fake(Outcome(OutcomeKind.OK))
    batch = devices(300)
    groups = [(None, batch[i::6]) for i in range(6)]
    results = asyncio.run(provider.send_groups(groups))  # type: ignore[arg-type]
    assert [len(r) for r in results] == [50] * 6
    assert all(o.kind is OutcomeKind.OK for r in results for o in r)
    assert sorted(provider.sent) == list(range(300)) and provider.sent[0] == 0
    assert provider.most_in_flight_during_first == 1
    assert waits == 0
