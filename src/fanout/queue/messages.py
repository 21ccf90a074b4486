"""The queue messages: what the fan-out stage and the delivery stage hand each other.

Two kinds travel through SQS, both JSON:

``FanoutTask``    ``{"kind": "fanout", "v": 2, "event": 7, "shard": null}``
                  shard null plans the event; a number runs that shard. A group of
                  1:1 events committed together (FANOUT_COALESCE_DIRECT) travels as one
                  message with ``"events": [7, 8, ...]`` (``event`` is the first).
``DeliveryBatch`` ``{"kind": "delivery", "v": 2, "event": 7, "key": "s0:1-812", "attempt": 0,
                  "published": 1764201600.25, "notification": {...},
                  "devices": {"apns": [[id, token, locale], ...],
                  "webpush": [[id, endpoint, locale, p256dh, auth], ...]}}``
                  or, in place of ``devices``, ``"devices_z": "<base64 of zlib of that JSON>"``;
                  or, sent again by the reconciler, ``"devices": {}`` and ``"reread":
                  {"users": [first, last]}`` (a fan-out batch's range of users) or
                  ``{"device_ids": [...]}`` (a retry batch's devices): the delivery stage
                  reads those devices from PostgreSQL.
``bundle``        ``{"kind": "bundle", "v": 2, "batches": [{delivery}, ...]}``:
                  delivery batches of several events in one SQS message (a group's 1:1
                  events, FANOUT_COALESCE_DIRECT). Each inner batch is a whole
                  ``DeliveryBatch`` of its own event (its key, notification, devices): the
                  bundle only shares the SQS requests, never a batch's content.

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
from collections.abc import Iterator, Sequence
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
# A group message names at most this many events (a group commits at most 1,000).
MAX_EVENTS_PER_TASK = 1_000
# A bundle's own JSON around its batches (kind, version, brackets).
BUNDLE_ENVELOPE_BYTES = 48
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
    # A group of events to plan together (their first is ``event_id``); empty: one event.
    events: tuple[int, ...] = ()

    def encode(self) -> str:
        doc: dict[str, Any] = {
            "kind": "fanout",
            "v": WIRE_VERSION,
            "event": self.event_id,
            "shard": self.shard,
        }
        if self.events:
            doc["events"] = list(self.events)
        return orjson.dumps(doc).decode()

    @classmethod
    def group(cls, event_ids: Sequence[int]) -> FanoutTask:
        """One message planning all of ``event_ids`` (a group's 1:1 events)."""
        return cls(event_ids[0], None, tuple(event_ids))


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


@dataclass(frozen=True, slots=True)
class DeliveryBundle:
    """Delivery batches of several events sharing one SQS message; each is delivered,
    recorded and deduplicated as if it had come alone."""

    batches: list[DeliveryBatch]


def encode_bundle(bodies: Sequence[str]) -> str:
    """One message holding the delivery batch messages ``bodies`` (each a JSON object,
    spliced in as it is: no batch is decoded again to be bundled)."""
    return f'{{"kind":"bundle","v":{WIRE_VERSION},"batches":[' + ",".join(bodies) + "]}"


def bundle_bytes(bodies_bytes: int, count: int) -> int:
    """The size of a bundle of ``count`` batches of ``bodies_bytes`` together."""
    return BUNDLE_ENVELOPE_BYTES + bodies_bytes + count


Message = FanoutTask | DeliveryBatch | DeliveryBundle


def events_of(message: Message) -> tuple[int, ...]:
    """The events a message is about."""
    if isinstance(message, DeliveryBundle):
        return tuple(dict.fromkeys(batch.event_id for batch in message.batches))
    if isinstance(message, FanoutTask) and message.events:
        return message.events
    return (message.event_id,)


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
    if kind == "bundle":
        return _decode_bundle(doc)
    event_id = doc.get("event")
    if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id <= 0:
        raise PoisonMessage("field 'event' must be a positive integer")
    if kind == "fanout":
        shard = doc.get("shard")
        if shard is not None and (not isinstance(shard, int) or shard < 0):
            raise PoisonMessage("field 'shard' must be null or a non-negative integer")
        if "events" in doc:
            return _decode_group(doc["events"], event_id, shard)
        return FanoutTask(event_id, shard)
    if kind == "delivery":
        return _decode_batch(doc, event_id)
    raise PoisonMessage(f"unknown message kind {kind!r}")


def _decode_group(ids: Any, event_id: int, shard: int | None) -> FanoutTask:
    if (
        not isinstance(ids, list)
        or not 0 < len(ids) <= MAX_EVENTS_PER_TASK
        or not all(_is_id(i) and i > 0 for i in ids)
        or ids[0] != event_id
    ):
        raise PoisonMessage(
            f"field 'events' must be 1 to {MAX_EVENTS_PER_TASK} event ids, 'event' first"
        )
    if shard is not None:
        raise PoisonMessage("a group of events is planned, not one shard: 'shard' must be null")
    return FanoutTask(event_id, None, tuple(ids))


def _decode_bundle(doc: dict[str, Any]) -> DeliveryBundle:
    inner = doc.get("batches")
    if not isinstance(inner, list) or not inner:
        raise PoisonMessage("field 'batches' must be a non-empty list of delivery batches")
    batches = []
    for index, batch in enumerate(inner):
        if not isinstance(batch, dict) or batch.get("kind") != "delivery":
            raise PoisonMessage(f"batches[{index}] is not a delivery batch")
        if batch.get("v") not in READABLE_VERSIONS:
            raise PoisonMessage(f"batches[{index}]: unknown message version {batch.get('v')!r}")
        event_id = batch.get("event")
        if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id <= 0:
            raise PoisonMessage(f"batches[{index}]: field 'event' must be a positive integer")
        batches.append(_decode_batch(batch, event_id))
    return DeliveryBundle(batches)


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
