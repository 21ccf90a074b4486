"""The queue messages: what the fan-out stage and the delivery stage hand each other.

Two kinds travel through SQS, both JSON:

``FanoutTask``    ``{"kind": "fanout", "v": 2, "event": 7, "shard": null}``
                  shard null plans the event; a number runs that shard.
``DeliveryBatch`` ``{"kind": "delivery", "v": 2, "event": 7, "key": "s0:1-812", "attempt": 0,
                  "published": 1764201600.25, "notification": {...},
                  "devices": {"apns": [[id, token, locale], ...],
                  "webpush": [[id, endpoint, locale, p256dh, auth], ...]}}``
                  or, in place of ``devices``, ``"devices_z": "<base64 of zlib of that JSON>"``;
                  or, sent again by the reconciler, ``"devices": {}`` and ``"reread":
                  {"users": [first, last]}`` (a fan-out batch's range of users) or
                  ``{"device_ids": [...]}`` (a retry batch's devices): the delivery stage
                  reads those devices from PostgreSQL.

Devices are grouped by platform because each group goes to one provider, and are
written as short arrays rather than objects: an object per device would repeat its
field names thousands of times in every message (SQS bills per 64 KB).

``devices_z`` is used whenever it is smaller. APNs tokens are hex, which zlib packs to
about half; even after base64 a batch of them is 0.67 of its JSON (82 -> 55 bytes a
device, measured on 12,000 tokens), so a 1 MiB message carries ~16,000 devices rather
than ~11,000: fewer SQS requests, fewer 64 KB chunks billed. zlib level 1 costs ~1.2 us
a device; random tokens (FCM's, Web Push keys) barely compress and go as plain JSON.
Version 1 (always plain ``devices``) is still read. ``published`` (the event's commit,
epoch seconds) is optional: it is what the publish-to-accepted latency is measured from.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from fanout.errors import FanoutError

PLATFORMS = ("apns", "fcm", "webpush")
# On the wire, an APNs device registered for Apple's sandbox (a debug build) is in a group
# of its own, so its environment costs no byte per device: the delivery stage sends the
# group to the sandbox endpoint with the same credential.
APNS_SANDBOX = "apns_sandbox"
WIRE_PLATFORMS = (*PLATFORMS, APNS_SANDBOX)
WIRE_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The fan-out stage never packs more (batching.py caps at it): a 1 MiB message holds
# ~16,000 APNs tokens once compressed.
MAX_DEVICES_PER_BATCH = 20_000
MAX_MESSAGE_BYTES = 1024 * 1024  # SQS's limit
# What ``devices_z`` may inflate to: a full batch is ~1.2 MB of JSON; more is a zip bomb.
MAX_DEVICES_JSON_BYTES = 16 * 1024 * 1024


class PoisonMessage(FanoutError):
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
        return [getattr(self, name) for name in WIRE_FIELDS[self.platform]]


# A device on the wire: a short array of these fields, in this order. This is the one
# definition: ``Device.wire`` writes it, ``DeliveryBatch.iter_devices`` and ``decode``
# read it, and the fan-out's SQL that writes it (store/fragments.py) is generated from it.
# The order is Device's own (less the platform, which is the group's key), so a wire
# array is a Device's arguments as they stand.
_WEB_PUSH_FIELDS = tuple(name for name in Device._fields if name != "platform")
WIRE_FIELDS: dict[str, tuple[str, ...]] = {
    "apns": _WEB_PUSH_FIELDS[:3],
    APNS_SANDBOX: _WEB_PUSH_FIELDS[:3],
    "fcm": _WEB_PUSH_FIELDS[:3],
    "webpush": _WEB_PUSH_FIELDS,
}


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
    # Sent again from what PostgreSQL recorded (the reconciler): the devices are to be
    # read there, from a fan-out batch's closed range of users or a retry batch's ids.
    users: tuple[int, int] | None = None
    device_ids: list[int] | None = None
    published_at: float | None = None  # the event's commit, epoch seconds (for metrics)

    @property
    def rereads(self) -> bool:
        return self.users is not None or self.device_ids is not None

    def device_count(self) -> int:
        return sum(len(entries) for entries in self.devices.values())

    def iter_devices(self) -> Iterator[Device]:
        for platform, entries in self.devices.items():
            for entry in entries:
                yield Device(entry[0], platform, *entry[1:])

    def encode(self) -> str:
        if self.rereads:
            reread: dict[str, Any] = (
                {"users": list(self.users)} if self.users else {"device_ids": self.device_ids}
            )
            return orjson.dumps(
                {
                    "kind": "delivery",
                    "v": WIRE_VERSION,
                    "event": self.event_id,
                    "key": self.key,
                    "attempt": self.attempt,
                    "notification": self.notification,
                    "devices": {},
                    "reread": reread,
                    **_published(self.published_at),
                }
            ).decode()
        return encode_delivery(
            self.event_id,
            self.key,
            self.attempt,
            self.notification,
            orjson.dumps(self.devices),
            published_at=self.published_at,
        )


def _published(published_at: float | None) -> dict[str, float]:
    return {} if published_at is None else {"published": round(published_at, 3)}


def encode_delivery(
    event_id: int,
    key: str,
    attempt: int,
    notification: dict[str, Any],
    devices_json: bytes,
    *,
    published_at: float | None = None,
) -> str:
    """A delivery batch's message body; ``devices_json`` is the devices object as JSON,
    sent compressed (``devices_z``) when that is smaller."""
    envelope: dict[str, Any] = {
        "kind": "delivery",
        "v": WIRE_VERSION,
        "event": event_id,
        "key": key,
        "attempt": attempt,
        **_published(published_at),
        "notification": notification,
    }
    packed = base64.b64encode(zlib.compress(devices_json, 1))
    if len(packed) < len(devices_json):
        envelope["devices_z"] = packed.decode()
        return orjson.dumps(envelope).decode()
    # Spliced in as it is: parsing it back into Python lists only to dump it again
    # would cost the fan-out stage more than all its other work per device.
    head = orjson.dumps(envelope)
    return (head[:-1] + b',"devices":' + devices_json + b"}").decode()


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
    if doc.get("v") not in READABLE_VERSIONS:
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
    notification = doc.get("notification")
    devices = _inflate(doc["devices_z"]) if "devices_z" in doc else doc.get("devices")
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
        if platform not in WIRE_PLATFORMS:
            raise PoisonMessage(f"unknown platform {platform!r} in 'devices'")
        width = len(WIRE_FIELDS[platform])
        if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == width and isinstance(e[0], int) for e in entries
        ):
            raise PoisonMessage(f"'devices.{platform}' must be a list of {width}-item arrays")
    published = doc.get("published")
    if published is not None and (
        not isinstance(published, int | float) or isinstance(published, bool)
    ):
        raise PoisonMessage("field 'published' must be a number (epoch seconds)")
    batch = DeliveryBatch(event_id, key, attempt, notification, devices)
    batch.published_at = None if published is None else float(published)
    if "reread" in doc:
        _decode_reread(doc["reread"], batch)
    return batch


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decode_reread(reread: Any, batch: DeliveryBatch) -> None:
    if not isinstance(reread, dict) or len(reread) != 1:
        raise PoisonMessage("field 'reread' must be an object with 'users' or 'device_ids'")
    if "users" in reread:
        users = reread["users"]
        if not (isinstance(users, list) and len(users) == 2 and all(map(_is_id, users))):
            raise PoisonMessage("field 'reread.users' must be [first, last] user ids")
        batch.users = (users[0], users[1])
    else:
        ids = reread.get("device_ids")
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_DEVICES_PER_BATCH
            or not all(map(_is_id, ids))
        ):
            raise PoisonMessage("field 'reread.device_ids' must be a list of device ids")
        batch.device_ids = ids


def _inflate(packed: Any) -> Any:
    """``devices_z`` back to the devices object; anything malformed is poison."""
    if not isinstance(packed, str):
        raise PoisonMessage("field 'devices_z' must be a string")
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(packed, validate=True), MAX_DEVICES_JSON_BYTES)
        if inflater.unconsumed_tail:
            raise PoisonMessage(f"'devices_z' inflates past {MAX_DEVICES_JSON_BYTES} bytes")
        return orjson.loads(raw)
    except (binascii.Error, zlib.error, orjson.JSONDecodeError) as exc:
        raise PoisonMessage(f"field 'devices_z' is not base64 zlib JSON: {exc}") from None
