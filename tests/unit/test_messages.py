from __future__ import annotations

import base64
import zlib

import orjson
import pytest

from fanout.queue.messages import (
    MAX_EVENTS_PER_TASK,
    DeliveryBatch,
    DeliveryBundle,
    FanoutTask,
    PoisonMessage,
    bundle_bytes,
    decode,
    encode_bundle,
    events_of,
)


def test_fanout_tasks_round_trip() -> None:
    for task in (FanoutTask(5), FanoutTask(5, shard=3)):
        assert decode(task.encode()) == task


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("garbage", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"kind": "fanout", "v": 99, "event": 1}', "version"),
        ('{"kind": "fanout", "v": 1, "event": "x"}', "'event'"),
        ('{"kind": "fanout", "v": 1, "event": 1, "shard": -1}', "'shard'"),
        ('{"kind": "nope", "v": 1, "event": 1}', "unknown message kind"),
        ('{"kind": "delivery", "v": 1, "event": 1, "key": "", "attempt": 0}', "'key'"),
        (
            '{"kind": "delivery", "v": 1, "event": 1, "key": "k", "attempt": 0,'
            ' "notification": {}, "devices": {"sms": []}}',
            "unknown platform",
        ),
        (
            '{"kind": "delivery", "v": 1, "event": 1, "key": "k", "attempt": 0,'
            ' "notification": {}, "devices": {"webpush": [[1, "e", "en"]]}}',
            "5-item",
        ),
    ],
)
def test_malformed_messages_are_poison_with_a_reason(body: str, complaint: str) -> None:
    with pytest.raises(PoisonMessage, match=complaint):
        decode(body)


def test_delivery_batch_round_trips() -> None:
    batch = DeliveryBatch(1, "s0:1-2", 0, {"title": "t"}, {"apns": [[1, "tok", None]]})
    decoded = decode(batch.encode())
    assert isinstance(decoded, DeliveryBatch)
    assert (decoded.key, decoded.devices) == (batch.key, batch.devices)


def test_a_compressed_delivery_batch_round_trips() -> None:
    tokens = [[i, bytes([i % 256]).hex() * 32, "en"] for i in range(1, 500)]
    batch = DeliveryBatch(1, "s0:1-2", 0, {"title": "t"}, {"apns": tokens})
    body = batch.encode()
    assert '"devices_z"' in body and len(body) < len(orjson.dumps(tokens))
    decoded = decode(body)
    assert isinstance(decoded, DeliveryBatch)
    assert decoded.devices == batch.devices


def test_version_1_messages_still_decode() -> None:
    body = (
        '{"kind": "delivery", "v": 1, "event": 1, "key": "k", "attempt": 0,'
        ' "notification": {}, "devices": {"apns": [[1, "tok", null]]}}'
    )
    decoded = decode(body)
    assert isinstance(decoded, DeliveryBatch) and decoded.devices == {"apns": [[1, "tok", None]]}


@pytest.mark.parametrize(
    ("devices_z", "complaint"),
    [
        ('"not base64!"', "not base64 zlib JSON"),
        ('"' + base64.b64encode(b"not zlib").decode() + '"', "not base64 zlib JSON"),
        ('"' + base64.b64encode(zlib.compress(b"\0" * (17 << 20))).decode() + '"', "inflates"),
        ("[1]", "must be a string"),
    ],
)
def test_malformed_compressed_devices_are_poison(devices_z: str, complaint: str) -> None:
    body = (
        '{"kind": "delivery", "v": 2, "event": 1, "key": "k", "attempt": 0,'
        f' "notification": {{}}, "devices_z": {devices_z}}}'
    )
    with pytest.raises(PoisonMessage, match=complaint):
        decode(body)


def test_the_publish_time_travels_with_a_batch_and_its_rereads() -> None:
    batch = DeliveryBatch(7, "s0:1-2", 0, {"title": "t"}, {"apns": [[1, "ab", None]]})
    batch.published_at = 1764201600.25
    assert decode(batch.encode()) == batch
    reread = DeliveryBatch(7, "s0:1-2/r1", 1, {"title": "t"}, device_ids=[1])
    reread.published_at = 1764201600.25
    assert decode(reread.encode()) == reread
    assert decode(DeliveryBatch(7, "k", 0, {"title": "t"}).encode()).published_at is None


def test_a_publish_time_that_is_not_a_number_is_poison() -> None:
    body = '{"kind":"delivery","v":2,"event":1,"key":"k","attempt":0,"published":"x","notification":{},"devices":{}}'
    with pytest.raises(PoisonMessage, match="'published' must be a number"):
        decode(body)


def test_a_group_of_events_travels_as_one_fanout_task() -> None:
    task = FanoutTask.group([7, 8, 12])
    assert task == FanoutTask(7, None, (7, 8, 12))
    assert decode(task.encode()) == task
    assert events_of(task) == (7, 8, 12) and events_of(FanoutTask(5, 2)) == (5,)


@pytest.mark.parametrize(
    ("events", "complaint"),
    [
        ([], "'events'"),
        ([1, 0], "'events'"),
        ([2, 3], "'event' first"),
        (list(range(1, MAX_EVENTS_PER_TASK + 2)), "'events'"),
    ],
)
def test_a_malformed_group_is_poison(events: list[int], complaint: str) -> None:
    body = orjson.dumps({"kind": "fanout", "v": 2, "event": 1, "shard": None, "events": events})
    with pytest.raises(PoisonMessage, match=complaint):
        decode(body.decode())


def test_a_bundle_keeps_each_batch_whole_and_its_own() -> None:
    first = DeliveryBatch(7, "s0:1-1", 0, {"title": "for 1"}, {"apns": [[11, "aa", None]]})
    second = DeliveryBatch(
        8, "s0:2-2", 0, {"title": "for 2"}, {"fcm": [[21, "t", "de"], [22, "u", None]]}
    )
    second.published_at = 1764201600.25
    body = encode_bundle([first.encode(), second.encode()])
    assert len(body) <= bundle_bytes(len(first.encode()) + len(second.encode()), 2)
    bundle = decode(body)
    assert isinstance(bundle, DeliveryBundle)
    assert bundle.batches == [first, second]
    assert events_of(bundle) == (7, 8)


@pytest.mark.parametrize(
    ("batches", "complaint"),
    [
        ("[]", "'batches'"),
        ('[{"kind": "fanout", "v": 2, "event": 1}]', r"batches\[0\] is not a delivery"),
        ('[{"kind": "delivery", "v": 2, "event": 0}]', r"batches\[0\]: field 'event'"),
        ('[{"kind": "delivery", "v": 2, "event": 1, "key": ""}]', "'key'"),
    ],
)
def test_a_malformed_bundle_is_poison(batches: str, complaint: str) -> None:
    with pytest.raises(PoisonMessage, match=complaint):
        decode(f'{{"kind": "bundle", "v": 2, "batches": {batches}}}')
