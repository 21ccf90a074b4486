from __future__ import annotations

import pytest

from fanout.messages import DeliveryBatch, FanoutTask, PoisonMessage, decode


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
