"""The send loop every push provider shares: one request per device, many at once, over
``transport.PushTransport`` (HTTP/2, or HTTP/1.1 where a service speaks nothing else)."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

from fanout.metrics import count_outcome
from fanout.notification import RenderedNotification
from fanout.open_tokens import EventTokens, OpenTokens
from fanout.providers.base import DELIVERED, Device, Outcome, OutcomeKind, Provider
from fanout.providers.breaker import Admission, Breakers, BreakerState, CircuitBreaker
from fanout.providers.transport import (
    AdaptiveLimit,
    PushTransport,
    Response,
    TransportError,
    retry_after_seconds,
)

Prepared = TypeVar("Prepared")


class Http2Provider(Provider, Generic[Prepared]):
    """Subclasses turn a notification into what every request shares (``prepare``, once
    per call) and send it to one device (``send_one``), mapping the answer to an Outcome."""

    name: str
    # The ``app`` label of its outcome counters: the key of the app whose credential it
    # sends with (empty: FANOUT_METRICS_APP_LABEL=false). Set by ``providers_of_credential``.
    app_label = ""
    # Whether the service has accepted a push signed by this credential yet. Until it has, a
    # refusal that blames the token for belonging to another app (APNs DeviceTokenNotForTopic,
    # FCM SENDER_ID_MISMATCH) does not retire it (base.not_yet_the_tokens): a bundle id or
    # Firebase project that is not the app's draws it for every device.
    accepted_one = False

    def __init__(
        self,
        client: PushTransport,
        limit: AdaptiveLimit,
        breakers: Breakers | None = None,
        open_tokens: OpenTokens | None = None,
    ) -> None:
        self.client = client
        self.limit = limit
        self.breakers = breakers if breakers is not None else Breakers(self.name, cooldown=60.0)
        self.open_tokens = open_tokens

    def open_minter(self, notification: RenderedNotification) -> EventTokens | None:
        """The minter of this event's ``fo_open`` tokens (one per device), or None: opens
        off (no key), no event (a test's rendering), or a Live Activity (ActivityKit hands
        the app no custom data to report with)."""
        if (
            self.open_tokens is None
            or notification.event_id is None
            or notification.kind == "liveactivity"
        ):
            return None
        return self.open_tokens.for_event(notification.event_id)

    def credential(self, device: Device) -> str:
        """The key of the credential a push to ``device`` is sent with (its breaker's name;
        never a secret). One per provider unless a subclass says otherwise."""
        return self.name

    @abstractmethod
    def prepare(self, notification: RenderedNotification) -> Prepared | Outcome:
        """What every device's request shares; an Outcome if none can be sent at all."""

    @abstractmethod
    async def send_one(self, prepared: Prepared, device: Device) -> Outcome: ...

    async def send(
        self, notification: RenderedNotification, devices: Sequence[Device]
    ) -> list[Outcome]:
        prepared = self.prepare(notification)
        if isinstance(prepared, Outcome):
            return [self._count(prepared)] * len(devices)
        outcomes: list[Outcome] = [DELIVERED] * len(devices)
        # Set once a request waited its whole timeout for a connection the service would not
        # give: the rest of this call is not tried, each sender would wait as long again
        # (16,000 devices, 500 senders, 30 s: 16 minutes for one attempt); they go back to
        # the batch's retry path at once, which sends them after its backoff.
        unreachable: list[Outcome] = []
        first = 0
        # A credential not yet seen working (a new app's provider, or a breaker's cool-down
        # over) is decided by one probe: send it alone first. Started together, every other
        # sender parked on the probe's answer and woke at once, a herd of one per device of
        # a small batch (issue #22: each of 100 apps' first batch of 1,000 devices).
        if devices and self.breakers[self.credential(devices[0])].state is not (
            BreakerState.CLOSED
        ):
            outcomes[0] = await self._send(prepared, devices[0], unreachable)
            first = 1
        todo = iter(range(first, len(devices)))

        async def sender() -> None:
            for i in todo:
                if unreachable:
                    outcomes[i] = self._count(unreachable[0])
                else:
                    outcomes[i] = await self._send(prepared, devices[i], unreachable)

        # A few hundred senders taking devices in turn, not a task per device: creating
        # and scheduling 10,000 tasks cost more than the requests' own framing.
        senders = min(len(devices) - first, self.limit.concurrency)
        await asyncio.gather(*(sender() for _ in range(senders)))
        return outcomes

    async def _send(
        self, prepared: Prepared, device: Device, unreachable: list[Outcome]
    ) -> Outcome:
        breaker = self.breakers[self.credential(device)]
        admission = breaker.decide()
        if admission is Admission.WAIT:  # another sender's probe decides: wait for it
            admission = await breaker.admit()
        if admission is Admission.HOLD:
            return self._count(_held(breaker))
        answered = False
        try:
            async with self.limit:
                try:
                    outcome = await self.send_one(prepared, device)
                except TransportError as exc:  # connection lost, GOAWAY, timeout, unreachable
                    kind = OutcomeKind.PERMANENT if exc.permanent else OutcomeKind.RETRY
                    outcome = Outcome(kind, reason=f"{self.name}: {exc}")
                    if exc.unsent and not exc.permanent and not unreachable:
                        unreachable.append(outcome)
            answered = True
        finally:
            if not answered and admission is Admission.PROBE:
                breaker.abandoned()
        if outcome.config:
            breaker.refused(outcome.reason or "config error")
            outcome = _held(breaker)
        else:
            breaker.succeeded(admission)
        return self._count(outcome)

    def retry_later(self, response: Response, detail: str = "") -> Outcome:
        """429 or 5xx: try again later (after Retry-After if given); a 429 also slows
        this provider down for every coroutine of the worker."""
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if response.status_code == 429:
            self.limit.slow_down(retry_after)
        reason = f"{self.name}: {response.status_code} {detail}".rstrip()
        return Outcome(OutcomeKind.RETRY, retry_after, reason)

    def _count(self, outcome: Outcome) -> Outcome:
        # The labelled counters are looked up once per (kind, reason), not per push:
        # labels() on every push cost ~1.5 µs (metrics.count_outcome keeps them).
        count_outcome(self.name, outcome, self.app_label)
        return outcome

    async def aclose(self) -> None:
        await self.client.aclose()


def _held(breaker: CircuitBreaker) -> Outcome:
    """Not sent (or refused for the credential): send again once the cool-down is over."""
    return Outcome(
        OutcomeKind.HELD,
        retry_after=breaker.retry_in() or breaker.cooldown,
        reason=breaker.reason,
    )
