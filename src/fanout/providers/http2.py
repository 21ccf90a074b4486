"""The send loop every push provider shares: one request per device, many at once, over
``transport.PushTransport`` (HTTP/2, or HTTP/1.1 where a service speaks nothing else)."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Iterator, Sequence
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
        return (await self.send_groups([(notification, devices)]))[0]

    async def send_groups(
        self, groups: Sequence[tuple[RenderedNotification, Sequence[Device]]]
    ) -> list[list[Outcome]]:
        """Every group's devices by one set of senders: a batch's locale groups each
        starting their own (up to ``limit.concurrency`` each, six locales: six sets, and a
        probe each) cost a small batch a sender task per device (issue #22: 100 apps'
        batches of 1,000 devices delivered at 0.65 the rate of one app's)."""
        results: list[list[Outcome]] = []
        work: list[tuple[Prepared, Sequence[Device], list[Outcome]]] = []
        for notification, devices in groups:
            prepared = self.prepare(notification)
            if isinstance(prepared, Outcome):
                results.append([self._count(prepared)] * len(devices))
                continue
            outcomes: list[Outcome] = [DELIVERED] * len(devices)
            results.append(outcomes)
            if devices:
                work.append((prepared, devices, outcomes))
        if not work:
            return results
        # Set once a request waited its whole timeout for a connection the service would not
        # give: the rest of this call is not tried, each sender would wait as long again
        # (16,000 devices, 500 senders, 30 s: 16 minutes for one attempt); they go back to
        # the batch's retry path at once, which sends them after its backoff.
        unreachable: list[Outcome] = []
        # A credential not yet seen working (a new app's provider, or a breaker's cool-down
        # over) is decided by one probe: send it alone first. Started together, every other
        # sender parked on the probe's answer and woke at once, a herd of one per device of
        # a small batch (issue #22: each of 100 apps' first batch of 1,000 devices).
        first_prepared, first_devices, first_outcomes = work[0]
        breaker = self.breakers[self.credential(first_devices[0])]
        probe = breaker.state is not BreakerState.CLOSED
        if probe:
            first_outcomes[0] = await self._send(first_prepared, first_devices[0], unreachable)
        todo = _pending(work, skip_first=probe)

        async def sender() -> None:
            for prepared, devices, outcomes, i in todo:
                if unreachable:
                    outcomes[i] = self._count(unreachable[0])
                else:
                    outcomes[i] = await self._send(prepared, devices[i], unreachable)

        # A few hundred senders taking devices in turn, not a task per device: creating
        # and scheduling 10,000 tasks cost more than the requests' own framing.
        count = sum(len(devices) for _, devices, _ in work) - probe
        senders = min(count, self.limit.concurrency)
        await asyncio.gather(*(sender() for _ in range(senders)))
        return results

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


def _pending(
    work: Sequence[tuple[Prepared, Sequence[Device], list[Outcome]]], *, skip_first: bool
) -> Iterator[tuple[Prepared, Sequence[Device], list[Outcome], int]]:
    """Each device still to send, with its group's request and outcomes, group by group
    (the senders take them in turn)."""
    for n, (prepared, devices, outcomes) in enumerate(work):
        for i in range(1 if skip_first and n == 0 else 0, len(devices)):
            yield prepared, devices, outcomes, i


def _held(breaker: CircuitBreaker) -> Outcome:
    """Not sent (or refused for the credential): send again once the cool-down is over."""
    return Outcome(
        OutcomeKind.HELD,
        retry_after=breaker.retry_in() or breaker.cooldown,
        reason=breaker.reason,
    )
