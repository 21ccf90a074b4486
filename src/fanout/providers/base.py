"""The provider interface: the one thing every push service module implements.

Every answer of every provider maps to one of four outcomes; nothing above a
provider module knows an HTTP status code.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from fanout.notification import RenderedNotification

_log = logging.getLogger("fanout.providers")

# Live Activities are iOS's: an activity's audience is its APNs tokens, so FCM and Web Push
# never meet one; should they, each device fails with this reason.
LIVE_ACTIVITY_NOT_HERE = "a Live Activity is sent to its APNs tokens only"


class Device(Protocol):
    """A device as a provider sees it: where to push and in which language, never how it
    travelled. The queue's wire record (``queue.messages.Device``, a NamedTuple) has these
    fields, so a batch's devices reach a provider as they were decoded: no copy per device
    on the delivery's hot path."""

    @property
    def id(self) -> int: ...
    @property
    def platform(self) -> str: ...
    @property
    def token(self) -> str: ...  # APNs and FCM: the token; Web Push: the endpoint
    @property
    def locale(self) -> str | None: ...
    @property
    def p256dh(self) -> str | None: ...  # Web Push only: the subscription's public key
    @property
    def auth(self) -> str | None: ...  # Web Push only: the subscription's auth secret


class OutcomeKind(StrEnum):
    OK = "ok"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 (a name, not a secret): deactivate the device
    RETRY = "retry"  # may succeed later: re-enqueue this device, after retry_after if given
    PERMANENT = "permanent"  # will never succeed as sent; the token may still be good
    # Not sent: the credential's breaker is open after a config error (providers/breaker.py).
    # Sent again after retry_after; never counted failed, never deactivated.
    HELD = "held"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    retry_after: float | None = None
    reason: str | None = None
    config: bool = False  # a config error: fanout's credential or settings, not the device


DELIVERED = Outcome(OutcomeKind.OK)


def not_yet_the_tokens(provider: str, reason: str, app: str = "") -> Outcome:
    """The service blames the token for being another app's (APNs DeviceTokenNotForTopic,
    FCM SENDER_ID_MISMATCH) before it has accepted any push with this credential: a bundle
    id or Firebase project that is not the app's draws exactly that for every device, and
    retiring them would lose every device of the app. The device is tried again (it is
    retired then if the credential has worked meanwhile, and counted failed, still active,
    if it never does); counted as a config error, for the alert. Not held by the breaker: a
    probe that is the one stale token would hold a working credential's devices for good."""
    from fanout.metrics import PROVIDER_CONFIG_ERRORS

    PROVIDER_CONFIG_ERRORS.labels(provider, app).inc()
    return Outcome(OutcomeKind.RETRY, reason=f"{provider}: {reason}")


class Provider(ABC):
    """Sends one rendered notification to many devices of its platform(s)."""

    #: Platforms this provider delivers to ("apns", "fcm", "webpush").
    platforms: frozenset[str]

    @abstractmethod
    async def send(
        self, notification: RenderedNotification, devices: Sequence[Device]
    ) -> list[Outcome]:
        """One outcome per device, in order. Never raises for a device's failure."""

    async def send_groups(
        self, groups: Sequence[tuple[RenderedNotification, Sequence[Device]]]
    ) -> list[list[Outcome]]:
        """Each group's outcomes (one per device, in order): a batch's devices, grouped by
        the rendering they get (their locale), in one call. Here each group's ``send``,
        concurrently; an HTTP/2 provider sends every group with one set of senders."""
        return list(await asyncio.gather(*(self.send(n, devices) for n, devices in groups)))

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""


def config_error(
    provider: str, reason: str, app: str = "", *, every_device: bool = True
) -> Outcome:
    """fanout's own credentials or settings are wrong: alert, and never blame the token.
    ``app``: the key of the app whose credential it is (the metric's label), or empty.
    ``every_device``: every push with this credential would be refused alike, so its
    breaker holds them (providers/breaker.py). False for a setting only some devices need
    (the Firebase project's APNs key, for its iOS apps' tokens): that device fails, counted
    and shown as a config error, and the others are sent.

    Logged once per breaker opening (providers/breaker.py) and once per batch (the
    delivery stage), not per device: a batch of 16,000 made 16,000 identical lines."""
    from fanout.metrics import PROVIDER_CONFIG_ERRORS

    PROVIDER_CONFIG_ERRORS.labels(provider, app).inc()
    _log.debug("%s refused fanout's credentials or settings: %s", provider, reason)
    return Outcome(
        OutcomeKind.PERMANENT, reason=f"{provider} config: {reason}", config=every_device
    )
