from __future__ import annotations

import os

import orjson
import pytest

from fanout.queue.messages import DeliveryBatch, Device, decode
from fanout.stages.batching import BatchPacker, PackedBatch, Row, batch_key, users_of_key

NOTIFICATION = {"title": "New book", "body": "Out today"}


def wire(device: Device) -> str:
    """What PostgreSQL writes for a device (store/fragments.py, DEVICE_WIRE)."""
    return orjson.dumps(device.wire()).decode()


def users(
    count: int, devices_each: int = 1, token_len: int = 64, *, random_tokens: bool = False
) -> list[tuple[int, list[Device]]]:
    def token(length: int = token_len, filler: str = "t") -> str:
        return os.urandom(length).hex()[:length] if random_tokens else filler * length

    return [
        (
            user,
            [
                Device(
                    user * 10 + k,
                    ("apns", "fcm", "webpush")[k % 3],
                    token(),
                    "en",
                    *((token(87, "p"), token(22, "a")) if k % 3 == 2 else ()),
                )
                for k in range(devices_each)
            ],
        )
        for user in range(1, count + 1)
    ]


def rows(stream: list[tuple[int, list[Device]]]) -> list[Row]:
    """What the page query returns: a row per device, one of NULLs for a user without."""
    return [(user, d.platform, wire(d)) for user, devices in stream for d in devices] or [
        (user, None, None) for user, _ in stream
    ]


def pack(
    stream: list[tuple[int, list[Device]]], max_bytes: int, **options: int
) -> list[PackedBatch]:
    packer = BatchPacker(
        event_id=7, shard=0, notification=NOTIFICATION, max_bytes=max_bytes, **options
    )
    every = rows(stream)
    batches: list[PackedBatch] = []
    for page in range(0, len(every), 777):  # pages of any length: a user may straddle two
        closed, _ = packer.add_rows(every[page : page + 777])
        batches += closed
    return batches + packer.flush()


def decoded(batch: PackedBatch) -> DeliveryBatch:
    message = decode(batch.body)
    assert isinstance(message, DeliveryBatch)
    return message


@pytest.mark.parametrize("max_bytes", [4096, 10_000, 262_144])
@pytest.mark.parametrize("random_tokens", [False, True])
def test_every_batch_fits_its_byte_limit(max_bytes: int, random_tokens: bool) -> None:
    batches = pack(users(3000, devices_each=3, random_tokens=random_tokens), max_bytes)
    assert len(batches) > 1
    for batch in batches:
        assert len(batch.body.encode()) <= max_bytes


def test_batches_are_filled_not_just_bounded() -> None:
    batches = pack(users(3000, devices_each=3, random_tokens=True), 10_000)
    for batch in batches[:-1]:
        assert len(batch.body) > 10_000 * 0.85


def test_hex_tokens_travel_compressed_and_more_fit_a_message() -> None:
    stream = users(20_000, random_tokens=True)  # one APNs device each
    batches = pack(stream, 100_000)
    assert all('"devices_z"' in b.body for b in batches)
    plain_per_device = sum(len(wire(d)) + 1 for _, devices in stream for d in devices) / 20_000
    assert all(b.devices > 1.25 * 100_000 / plain_per_device for b in batches[:-1])


def test_the_device_cap_closes_a_batch() -> None:
    batches = pack(users(100, devices_each=2), 1_000_000, max_devices=30)
    assert {b.devices for b in batches[:-1]} == {30}


def test_every_device_lands_in_exactly_one_batch() -> None:
    stream = users(2000, devices_each=2, random_tokens=True)
    batches = pack(stream, 8192)
    packed = [d.id for b in batches for d in decoded(b).iter_devices()]
    assert sorted(packed) == sorted(d.id for _, devs in stream for d in devs)
    assert sum(b.devices for b in batches) == len(packed)


def test_a_user_is_never_split_and_keys_name_user_ranges() -> None:
    batches = pack(users(500, devices_each=3, random_tokens=True), 4096)
    previous_last = 0
    for batch in batches:
        owners = {d.id // 10 for d in decoded(batch).iter_devices()}
        first, last = (int(x) for x in batch.key.split(":")[1].split("-"))
        assert owners == set(range(first, last + 1))
        assert first == previous_last + 1
        assert batch.last_user == last and batch.users == len(owners)
        previous_last = last


def test_packing_resumed_at_a_batch_boundary_gives_the_same_batches() -> None:
    """What makes a crashed shard's re-packed batches carry the keys already sent."""
    stream = users(3000, devices_each=2, random_tokens=True)
    batches = pack(stream, 20_000)
    resume_after = batches[2].last_user
    again = pack([(u, d) for u, d in stream if u > resume_after], 20_000)
    assert [(b.key, b.body) for b in again] == [(b.key, b.body) for b in batches[3:]]


def test_users_without_devices_are_counted_but_pack_nothing() -> None:
    packer = BatchPacker(event_id=7, shard=0, notification=NOTIFICATION, max_bytes=4096)
    assert packer.add_rows([(1, None, None), (2, None, None)]) == ([], 2)
    assert packer.flush() == []


def test_add_rows_counts_the_users_it_began() -> None:
    packer = BatchPacker(event_id=7, shard=0, notification=NOTIFICATION, max_bytes=4096)
    _, began = packer.add_rows(rows(users(50, devices_each=3)))
    assert began == 50


def test_a_user_too_large_for_any_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="user 1"):
        pack(users(1, devices_each=40, token_len=200, random_tokens=True), 4096)


def test_packed_batches_decode_back_to_the_same_devices() -> None:
    stream = users(100, devices_each=3, random_tokens=True)
    expected = {d.id: d for _, devices in stream for d in devices}
    for batch in pack(stream, 4096):
        message = decoded(batch)
        assert all(expected[d.id] == d for d in message.iter_devices())
        assert (message.key, message.attempt) == (batch.key, 0)
        assert message.notification == NOTIFICATION


def test_a_batch_key_names_its_users_and_a_retry_key_does_not() -> None:
    assert users_of_key(batch_key(3, 17, 912)) == (17, 912)
    assert users_of_key("s3:17-912/r2") is None
    assert users_of_key("garbage") is None


def test_held_back_users_are_counted_with_the_batch_that_passes_them_and_once() -> None:
    # Users 1..60 with one device each; every third held back (a row of NULLs and a reason).
    stream: list[Row] = []
    for user, devices in users(60):
        if user % 3 == 0:
            stream.append((user, None, None, "muted" if user % 2 else "opted_out"))
        else:
            stream += [(user, d.platform, wire(d), None) for d in devices]
    packer = BatchPacker(event_id=1, shard=0, notification=NOTIFICATION, max_bytes=1024)
    batches, _ = packer.add_rows(stream)
    batches += packer.flush()
    tail = packer.take_held_back()

    assert len(batches) > 1
    for batch in batches:
        assert all(user % 3 for user in batch.user_ids)
        held_in_range = [u for u in range(1, batch.last_user + 1) if u % 3 == 0]
        counted = sum(sum(b.held_back.values()) for b in batches if b.last_user <= batch.last_user)
        assert counted == len(held_in_range)  # exactly those up to its last user
    counted_total: dict[str, int] = {}
    for part in [*(b.held_back for b in batches), tail]:
        for reason, count in part.items():
            counted_total[reason] = counted_total.get(reason, 0) + count
    assert counted_total == {"muted": 10, "opted_out": 10}
    assert packer.take_held_back() == {}


def test_a_run_of_users_left_out_counts_each_of_them_with_the_batch_that_passes_it() -> None:
    # Users 1..60, one device each; each user divisible by 5 sent to, the four before them
    # a tag filter's run (fragments.filtered_recipients_query): one row for the four, the
    # last of them its user, three of them with a device (counted held back).
    stream: list[Row] = []
    for user, devices in users(60):
        if user % 5 == 0:
            stream.append((user - 1, None, None, "filtered", None, 4, 3))
            stream += [(user, d.platform, wire(d), None, None, None, None) for d in devices]
    packer = BatchPacker(
        event_id=1, shard=0, notification=NOTIFICATION, max_bytes=1024, max_devices=4
    )
    batches, began = packer.add_rows(stream)
    batches += packer.flush()
    tail = packer.take_held_back()

    assert began == 60
    assert len(batches) > 1 and tail == {}
    for batch in batches:
        counted = sum(
            b.held_back.get("filtered", 0) for b in batches if b.last_user <= batch.last_user
        )
        assert counted == 3 * (batch.last_user // 5)
    # A run with no device: its users counted as read, nobody held back.
    packer = BatchPacker(event_id=1, shard=0, notification=NOTIFICATION, max_bytes=1024)
    assert packer.add_rows([(9, None, None, None, None, 9, 0)]) == ([], 9)
    assert packer.take_held_back() == {}
