from __future__ import annotations

import orjson
import pytest

from fanout.batching import BatchPacker
from fanout.messages import DeliveryBatch, Device, decode

NOTIFICATION = {"title": "New book", "body": "Out today"}


def users(count: int, devices_each: int = 1, token_len: int = 64) -> list[tuple[int, list[Device]]]:
    return [
        (
            user,
            [
                Device(
                    user * 10 + k,
                    ("apns", "fcm", "webpush")[k % 3],
                    "t" * token_len,
                    "en",
                    *(("p" * 87, "a" * 22) if k % 3 == 2 else ()),
                )
                for k in range(devices_each)
            ],
        )
        for user in range(1, count + 1)
    ]


def pack(stream: list[tuple[int, list[Device]]], max_bytes: int) -> list[DeliveryBatch]:
    packer = BatchPacker(event_id=7, shard=0, notification=NOTIFICATION, max_bytes=max_bytes)
    batches = [b for user, devices in stream if (b := packer.add_user(user, devices))]
    if (tail := packer.flush()) is not None:
        batches.append(tail)
    return batches


@pytest.mark.parametrize("max_bytes", [4096, 10_000, 262_144])
def test_every_batch_fits_its_byte_limit(max_bytes: int) -> None:
    batches = pack(users(3000, devices_each=3), max_bytes)
    assert len(batches) > 1
    for batch in batches:
        assert len(batch.encode().encode()) <= max_bytes


def test_batches_are_filled_not_just_bounded() -> None:
    batches = pack(users(3000), 10_000)
    for batch in batches[:-1]:
        assert len(batch.encode()) > 10_000 * 0.9


def test_every_device_lands_in_exactly_one_batch() -> None:
    stream = users(2000, devices_each=2)
    batches = pack(stream, 8192)
    packed = [d.id for b in batches for d in b.iter_devices()]
    assert sorted(packed) == sorted(d.id for _, devs in stream for d in devs)


def test_a_user_is_never_split_and_keys_name_user_ranges() -> None:
    batches = pack(users(500, devices_each=3), 4096)
    previous_last = 0
    for batch in batches:
        owners = {d.id // 10 for d in batch.iter_devices()}
        first, last = (int(x) for x in batch.key.split(":")[1].split("-"))
        assert owners == set(range(first, last + 1))
        assert first == previous_last + 1
        assert batch.last_user == last and batch.user_count == len(owners)
        previous_last = last


def test_users_without_devices_are_skipped() -> None:
    packer = BatchPacker(event_id=7, shard=0, notification=NOTIFICATION, max_bytes=4096)
    assert packer.add_user(1, []) is None
    assert packer.flush() is None


def test_a_user_too_large_for_any_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="user 1"):
        pack(users(1, devices_each=40, token_len=200), 4096)


def test_packed_batches_decode_back_to_the_same_devices() -> None:
    stream = users(100, devices_each=3)
    for batch in pack(stream, 4096):
        decoded = decode(batch.encode())
        assert isinstance(decoded, DeliveryBatch)
        assert list(decoded.iter_devices()) == list(batch.iter_devices())
        assert orjson.loads(batch.encode())["notification"] == NOTIFICATION
