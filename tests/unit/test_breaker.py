"""The config-error breaker as plain logic, on a clock the test moves."""

from __future__ import annotations

import asyncio

from fanout.providers.breaker import Admission, Breakers, BreakerState, CircuitBreaker
from fanout.stages.holding import held_key, holds_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, cooldown: float = 60.0) -> CircuitBreaker:
    return CircuitBreaker("apns", "TEAM/KEY/app", cooldown=cooldown, clock=clock)


def test_an_untested_credential_sends_one_probe_and_the_rest_wait_for_its_answer() -> None:
    b = breaker(Clock())
    assert b.decide() is Admission.PROBE
    assert b.decide() is Admission.WAIT
    b.succeeded(Admission.PROBE)
    assert b.state is BreakerState.CLOSED
    assert b.decide() is Admission.SEND


def test_a_config_error_holds_everything_back_until_the_cooldown_then_one_probe() -> None:
    clock = Clock()
    b = breaker(clock)
    b.decide()
    assert b.refused("apns config: 403 InvalidProviderToken") is True
    assert b.state is BreakerState.OPEN and b.opens == 1
    assert [b.decide() for _ in range(3)] == [Admission.HOLD] * 3
    assert b.retry_in() == 60.0
    clock.now += 59.9
    assert b.decide() is Admission.HOLD
    clock.now += 0.1
    assert b.decide() is Admission.PROBE
    assert b.state is BreakerState.HALF_OPEN
    assert b.decide() is Admission.WAIT


def test_a_probe_refused_again_reopens_for_another_cooldown_without_counting_an_opening() -> None:
    clock = Clock()
    b = breaker(clock, cooldown=10)
    b.decide()
    b.refused("bad")
    clock.now += 10
    assert b.decide() is Admission.PROBE
    assert b.refused("bad") is True  # half-open -> open: it opened again
    assert b.decide() is Admission.HOLD and b.retry_in() == 10
    assert b.refused("bad") is False  # already open (a request in flight before it opened)


def test_a_probe_that_succeeds_closes_it() -> None:
    clock = Clock()
    b = breaker(clock, cooldown=5)
    b.decide()
    b.refused("bad")
    clock.now += 5
    assert b.decide() is Admission.PROBE
    b.succeeded(Admission.PROBE)
    assert b.state is BreakerState.CLOSED and b.reason is None
    assert b.decide() is Admission.SEND


def test_a_success_sent_before_the_breaker_opened_does_not_close_it() -> None:
    b = breaker(Clock())
    b.decide()
    b.succeeded(Admission.PROBE)
    b.refused("bad")  # in flight while the credential was revoked
    b.succeeded(Admission.SEND)  # another one, sent before: proves nothing now
    assert b.state is BreakerState.OPEN


def test_an_abandoned_probe_lets_another_sender_probe() -> None:
    b = breaker(Clock())
    assert b.decide() is Admission.PROBE
    b.abandoned()
    assert b.decide() is Admission.PROBE


def test_senders_waiting_for_a_probe_are_held_when_it_is_refused() -> None:
    async def scenario() -> list[Admission]:
        b = breaker(Clock())
        assert b.decide() is Admission.PROBE
        waiting = [asyncio.create_task(b.admit()) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(task.done() for task in waiting)
        b.refused("bad")
        return list(await asyncio.gather(*waiting))

    assert asyncio.run(scenario()) == [Admission.HOLD] * 3


def test_breakers_are_per_credential() -> None:
    breakers = Breakers("webpush", cooldown=60, clock=Clock())
    breakers["k@push.example"].decide()
    breakers["k@push.example"].refused("webpush config: 403")
    assert breakers["k@push.example"].decide() is Admission.HOLD
    assert breakers["k@other.example"].decide() is Admission.PROBE


def test_held_batch_keys_are_unique_and_count_the_holds() -> None:
    assert held_key("s0:1-9") == "s0:1-9/h1"
    assert held_key("s0:1-9/h1") == "s0:1-9/h2"
    assert held_key("s0:1-9/r2") == "s0:1-9/r2/h1"
    assert held_key("s0:1-9/h2/r1") == "s0:1-9/h2/r1/h1"
    assert holds_of("s0:1-9") == 0
    assert holds_of("s0:1-9/h3") == 3
    assert holds_of("s0:1-9/h3/r1/h2") == 5
