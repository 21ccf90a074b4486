"""The queue messages: what the fan-out stage and the delivery stage hand each other.

Two kinds travel through SQS, both JSON:

``FanoutTask``    ``{"kind": "fanout", "v": 1, "event": 7, "shard": null}``
                  shard null plans the event; a number runs that shard.
``DeliveryBatch`` ``{"kind": "delivery", "v": 1, "event": 7, "key": "s0:1-812", "attempt": 0,
                  "notification": {...}, "devices": {"apns": [[id, token, locale], ...],
                  "webpush": [[id, endpoint, locale, p256dh, auth], ...]}}``

Devices are grouped by platform because each group goes to one provider, and are
written as short arrays rather than objects: an object per device would repeat its
field names thousands of times in every message (SQS bills per 64 KB).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

PLATFORMS = ("apns", "fcm", "webpush")
WIRE_VERSION = 1
# The fan-out stage never packs more: a full 1 MiB message of APNs tokens is ~12,000.
MAX_DEVICES_PER_BATCH = 20_000
MAX_MESSAGE_BYTES = 1024 * 1024  # SQS's limit


class PoisonMessage(Exception):
    """A message that can never be processed: it ends in the dead-letter queue."""


class Device(NamedTuple):
    """One push target, as the fan-out stage read it from PostgreSQL."""

    id: int
    platform: str
    token: str
    locale: str | None = None
    p256dh: str | None = None  # Web Push only: the subscription's public key
    auth: str | None = None  # Web Push only: the subscription's auth secret

    def wire(self) -> list[Any]:
        if self.platform == "webpush":
            return [self.id, self.token, self.locale, self.p256dh, self.auth]
        return [self.id, self.token, self.locale]


@dataclass(frozen=True, slots=True)
class FanoutTask:
    """Fan one event out: plan it (``shard`` None) or run one of its shards."""

    event_id: int
    shard: int | None = None

    def encode(self) -> str:
        return orjson.dumps(
            {"kind": "fanout", "v": WIRE_VERSION, "event": self.event_id, "shard": self.shard}
        ).decode()


@dataclass(slots=True)
class DeliveryBatch:
    """Devices of one event that one delivery invocation sends to.

    ``key`` names the batch within its event (which users it covers, which retry it is),
    so a batch that SQS delivers twice is recognised and sent once.
    """

    event_id: int
    key: str
    attempt: int
    notification: dict[str, Any]
    devices: dict[str, list[list[Any]]] = field(default_factory=dict)
    # Bookkeeping of the fan-out stage that packed it; not part of the message.
    user_count: int = 0
    last_user: int = 0

    def device_count(self) -> int:
        return sum(len(entries) for entries in self.devices.values())

    def iter_devices(self) -> Iterator[Device]:
        for platform, entries in self.devices.items():
            for entry in entries:
                yield Device(entry[0], platform, *entry[1:])

    def encode(self) -> str:
        return orjson.dumps(
            {
                "kind": "delivery",
                "v": WIRE_VERSION,
                "event": self.event_id,
                "key": self.key,
                "attempt": self.attempt,
                "notification": self.notification,
                "devices": self.devices,
            }
        ).decode()


Message = FanoutTask | DeliveryBatch


def decode(body: str) -> Message:
    """Parse a queue message; anything malformed raises PoisonMessage saying what."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise PoisonMessage(f"message of {len(body)} characters is over the 1 MiB limit")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PoisonMessage("body is not a JSON object")
    if doc.get("v") != WIRE_VERSION:
        raise PoisonMessage(f"unknown message version {doc.get('v')!r}")
    kind = doc.get("kind")
    event_id = doc.get("event")
    if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id <= 0:
        raise PoisonMessage("field 'event' must be a positive integer")
    if kind == "fanout":
        shard = doc.get("shard")
        if shard is not None and (not isinstance(shard, int) or shard < 0):
            raise PoisonMessage("field 'shard' must be null or a non-negative integer")
        return FanoutTask(event_id, shard)
    if kind == "delivery":
        return _decode_batch(doc, event_id)
    raise PoisonMessage(f"unknown message kind {kind!r}")


def _decode_batch(doc: dict[str, Any], event_id: int) -> DeliveryBatch:
    key, attempt = doc.get("key"), doc.get("attempt")
    notification, devices = doc.get("notification"), doc.get("devices")
    if not isinstance(key, str) or not key:
        raise PoisonMessage("field 'key' must be a non-empty string")
    if not isinstance(attempt, int) or attempt < 0:
        raise PoisonMessage("field 'attempt' must be a non-negative integer")
    if not isinstance(notification, dict):
        raise PoisonMessage("field 'notification' must be an object")
    if not isinstance(devices, dict):
        raise PoisonMessage("field 'devices' must be an object")
    if sum(len(e) for e in devices.values() if isinstance(e, list)) > MAX_DEVICES_PER_BATCH:
        raise PoisonMessage(f"batch holds more than {MAX_DEVICES_PER_BATCH} devices")
    for platform, entries in devices.items():
        if platform not in PLATFORMS:
            raise PoisonMessage(f"unknown platform {platform!r} in 'devices'")
        width = 5 if platform == "webpush" else 3
        if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == width and isinstance(e[0], int) for e in entries
        ):
            raise PoisonMessage(f"'devices.{platform}' must be a list of {width}-item arrays")
    return DeliveryBatch(event_id, key, attempt, notification, devices)
