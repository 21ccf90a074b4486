"""A circuit breaker per provider credential, for config errors.

A config error (APNs 403 InvalidProviderToken, FCM 401/403, a push service refusing the
VAPID key) says fanout's credential is wrong, not the device's token: every other push
with that credential would be refused the same way. Sending them all anyway cost a batch
~16,000 refused requests and 16,000 devices counted failed. So the first config error
opens the credential's breaker: its devices are not sent but held back (the delivery
stage reschedules them after the cool-down; they are never failed or deactivated for
it), and once the cool-down has passed one probe request decides: accepted (or refused
for any other reason) closes the breaker, another config error opens it again.

A credential not yet seen working starts half-open, so a worker with a bad credential
sends one request, not a batch's worth, before it knows. Once closed, the requests
already in flight when the credential goes bad (up to the provider's concurrency) are
refused; each of them is held back too.

The state is per process (a worker, a Lambda container): each finds out with its own one
request. ``CircuitBreaker`` is plain logic over an injected clock; ``admit`` adds the one
wait (for the probe's answer) that an asyncio sender needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import Enum, IntEnum

from fanout.metrics import PROVIDER_BREAKER_OPENS, PROVIDER_BREAKER_STATE

log = logging.getLogger(__name__)


class BreakerState(IntEnum):
    """The values of the ``fanout_provider_breaker_state`` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Admission(Enum):
    SEND = "send"  # closed: send
    PROBE = "probe"  # half-open: this request is the one that decides; report its answer
    WAIT = "wait"  # half-open, a probe in flight: ask again once it is answered
    HOLD = "hold"  # open: do not send; send again after ``retry_in()``


class CircuitBreaker:
    """One credential's breaker. ``key`` names the credential (never a secret)."""

    def __init__(
        self,
        provider: str,
        key: str,
        *,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.key = key
        self.cooldown = cooldown
        self.clock = clock
        self.state = BreakerState.HALF_OPEN
        self.reason: str | None = None  # the config error that opened it
        self.opens = 0
        self._opened_at = 0.0
        self._probing = False
        self._answered: asyncio.Event | None = None  # set when a probe's answer is in
        self._gauge = PROVIDER_BREAKER_STATE.labels(provider, key)
        self._gauge.set(self.state)

    def decide(self) -> Admission:
        """What the next request may do now (a PROBE must be answered: ``succeeded``,
        ``refused`` or ``abandoned``)."""
        if self.state is BreakerState.CLOSED:
            return Admission.SEND
        if self.state is BreakerState.OPEN:
            if self.retry_in() > 0:
                return Admission.HOLD
            self._set(BreakerState.HALF_OPEN)
        if self._probing:
            return Admission.WAIT
        self._probing = True
        return Admission.PROBE

    def succeeded(self, admission: Admission) -> None:
        """A request went through (or was refused for a reason other than the credential).
        Only a probe closes the breaker: a request sent before it opened proves nothing."""
        if admission is not Admission.PROBE:
            return
        if self.state is not BreakerState.CLOSED:
            if self.reason is not None:
                log.warning("%s credential %s works again: breaker closed", self.provider, self.key)
            self._set(BreakerState.CLOSED)
            self.reason = None
        self._answer()

    def refused(self, reason: str) -> bool:
        """A config error: open (again) for a cool-down. True if this opened it."""
        opened = self.state is not BreakerState.OPEN
        self.reason = reason
        self._opened_at = self.clock()
        if opened:
            self.opens += 1
            PROVIDER_BREAKER_OPENS.labels(self.provider, self.key).inc()
            self._set(BreakerState.OPEN)
            log.error(
                "%s refused credential %s (%s): its devices are held back, one probe in %gs",
                self.provider,
                self.key,
                reason,
                self.cooldown,
            )
        self._answer()
        return opened

    def abandoned(self) -> None:
        """A probe that got no answer (its sender was cancelled): let another one go."""
        self._answer()

    def retry_in(self) -> float:
        """Seconds until the cool-down is over (0 unless open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self.clock())

    async def admit(self) -> Admission:
        """SEND, PROBE or HOLD, waiting out another sender's probe if one is in flight."""
        while (admission := self.decide()) is Admission.WAIT:
            if self._answered is None:
                self._answered = asyncio.Event()
            await self._answered.wait()
        return admission

    def _answer(self) -> None:
        self._probing = False
        if self._answered is not None:
            self._answered.set()
            self._answered = None

    def _set(self, state: BreakerState) -> None:
        self.state = state
        self._gauge.set(state)


class Breakers:
    """A provider's breakers by credential key, made on first use."""

    def __init__(
        self, provider: str, *, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.provider = provider
        self.cooldown = cooldown
        self.clock = clock
        self._by_key: dict[str, CircuitBreaker] = {}

    def __getitem__(self, key: str) -> CircuitBreaker:
        breaker = self._by_key.get(key)
        if breaker is None:
            breaker = self._by_key[key] = CircuitBreaker(
                self.provider, key, cooldown=self.cooldown, clock=self.clock
            )
        return breaker
