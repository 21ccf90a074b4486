"""The bundling of a group's delivery batches (stages/coalescing.py), on a real SQS queue."""

from __future__ import annotations

from fanout.queue.messages import DeliveryBatch, DeliveryBundle, decode
from fanout.queue.sqs import Queues
from fanout.stages.coalescing import BundlingQueue
from tests.helpers import drain


def batch(event_id: int) -> DeliveryBatch:
    return DeliveryBatch(
        event_id,
        f"s0:{event_id}-{event_id}",
        0,
        {"title": f"for {event_id}"},
        {"apns": [[event_id, "ab" * 32, None]]},
    )


async def test_batches_go_out_in_bundles_within_the_size_each_whole_and_once(
    queues: Queues,
) -> None:
    bodies = [batch(n).encode() for n in range(1, 8)]
    size = len(bodies[0].encode())
    bundling = BundlingQueue(queues.delivery, max_bytes=3 * size + 100)  # three fit a bundle
    assert await bundling.send_many(bodies[:4]) == 1  # the first bundle was full: sent
    assert await bundling.send_many(bodies[4:]) == 1
    assert await bundling.flush() == 1  # the seventh, alone
    assert await bundling.flush() == 0
    assert bundling.bundles == 3

    messages = await drain(queues.delivery, idle_polls=1)
    assert all(len(m.encode()) <= 3 * size + 100 for m in messages)
    decoded = [decode(m) for m in messages]
    found = [b for d in decoded for b in (d.batches if isinstance(d, DeliveryBundle) else [d])]
    assert sorted(b.event_id for b in found) == list(range(1, 8))  # each once, whole
    assert sorted(found, key=lambda b: b.event_id) == [batch(n) for n in range(1, 8)]
    # A bundle of one would be a bundle for nothing: the last batch went as it is.
    assert sum(isinstance(d, DeliveryBatch) for d in decoded) == 1
