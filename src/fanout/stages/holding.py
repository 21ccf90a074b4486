"""Devices held back by an open breaker (providers/breaker.py): sent again after the
cool-down as a batch of their own, recorded like a retry batch so that nothing is lost
if the worker dies, but without spending the devices' delivery attempts.

A held batch is named after its parent with ``/h<n>`` (``s0:1-812/h1``, then
``s0:1-812/h2`` if it is held again; ``.../r2/h1`` under a retry batch), so every batch
key stays unique and the key alone says how often its devices were held: the sum of its
``/h<n>`` numbers. Past ``FANOUT_BREAKER_MAX_HOLDS`` the devices count failed with the
config error, so an event whose credential is never fixed still ends (after about an
hour at the defaults) rather than being held for ever.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import asyncpg

from fanout.config import Settings
from fanout.providers import Outcome
from fanout.queue.messages import DeliveryBatch, Device
from fanout.queue.sqs import MAX_DELAY_SECONDS
from fanout.store import batches

log = logging.getLogger(__name__)

_HELD_SUFFIX = re.compile(r"/h(\d+)$")
_HOLDS = re.compile(r"/h(\d+)(?=/|$)")


@dataclass
class Hold:
    """The devices of a batch that an open breaker held back, gathered from outcomes."""

    devices: list[Device] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    after: float = 0.0  # seconds until the last breaker's cool-down is over

    def add(self, device: Device, outcome: Outcome) -> None:
        self.devices.append(device)
        reason = outcome.reason or "config error"
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.after = max(self.after, outcome.retry_after or 0.0)

    @property
    def reason(self) -> str:
        """The reason most of the devices were held for (the one a batch records)."""
        return max(self.reasons, key=self.reasons.__getitem__)


@dataclass(frozen=True)
class HeldBatch:
    batch: DeliveryBatch
    delay: int
    reason: str


def holds_of(key: str) -> int:
    """How often the devices of the batch named ``key`` were held back already."""
    return sum(int(n) for n in _HOLDS.findall(key))


def held_key(key: str) -> str:
    """The key of a batch holding devices of the batch named ``key``."""
    found = _HELD_SUFFIX.search(key)
    if found is None:
        return f"{key}/h1"
    return f"{key[: found.start()]}/h{int(found.group(1)) + 1}"


def held_batch(
    batch: DeliveryBatch, hold: Hold, settings: Settings
) -> tuple[HeldBatch | None, dict[str, int]]:
    """The batch that sends the held devices again after the cool-down; or, for devices
    held ``breaker_max_holds`` times already, None and their failures by reason."""
    if holds_of(batch.key) + 1 > settings.breaker_max_holds:
        log.error(
            "batch %s: %d device(s) held back %d times, given up: %s",
            batch.key,
            len(hold.devices),
            settings.breaker_max_holds,
            hold.reasons,
        )
        return None, dict(hold.reasons)
    held = DeliveryBatch(
        event_id=batch.event_id,
        key=held_key(batch.key),
        attempt=batch.attempt,  # not a delivery attempt: nothing was wrong with the devices
        notification=batch.notification,
        published_at=batch.published_at,
    )
    for device in hold.devices:
        held.devices.setdefault(device.platform, []).append(device.wire())
    delay = int(min(MAX_DELAY_SECONDS, max(1, math.ceil(hold.after))))
    # One line per batch, not per device: a batch holds ~16,000 devices.
    log.warning(
        "batch %s: %d device(s) held back (%s); sent again in %ds as %s",
        batch.key,
        len(hold.devices),
        "; ".join(hold.reasons),
        delay,
        held.key,
    )
    return HeldBatch(held, delay, hold.reason), {}


async def record_held(conn: asyncpg.Connection, held: HeldBatch, settings: Settings) -> None:
    """Record the held batch by its device ids, with the reason the event status shows."""
    await batches.record_held_batch(
        conn,
        event_id=held.batch.event_id,
        batch_key=held.batch.key,
        attempt=held.batch.attempt,
        device_ids=[device.id for device in held.batch.iter_devices()],
        delay_seconds=held.delay,
        overdue_after=settings.reconcile_after_seconds,
        reason=held.reason,
    )
