"""The bundling of a group's delivery batches (stages/coalescing.py), on a real SQS queue."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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


async def test_bundles_share_the_process_slots_and_the_first_received_goes_first() -> None:
    # Two bundles' batches at once in one worker (issue #26): together they hold at most
    # WORK_AT_ONCE slots (pooled connections), and the second's batches wait until every
    # batch of the first has started, rather than both slowing each other down.
    import asyncio

    from fanout.stages import coalescing

    gate = asyncio.Event()
    started: list[tuple[str, int]] = []
    in_flight = most = 0

    def work_of(bundle: str) -> Callable[[int], Awaitable[int]]:
        async def work(index: int) -> int:
            nonlocal in_flight, most
            started.append((bundle, index))
            in_flight += 1
            most = max(most, in_flight)
            await gate.wait()
            in_flight -= 1
            return index

        return work

    size = coalescing.WORK_AT_ONCE + 3
    first = asyncio.create_task(
        coalescing._all(range(size), work_of("first"), room=coalescing._bundle_room())
    )
    second = asyncio.create_task(
        coalescing._all(range(size), work_of("second"), room=coalescing._bundle_room())
    )
    while len(started) < coalescing.WORK_AT_ONCE:
        await asyncio.sleep(0)
    for _ in range(10):  # anyone else who could start has had its turn
        await asyncio.sleep(0)
    assert started == [("first", i) for i in range(coalescing.WORK_AT_ONCE)]
    gate.set()
    assert await first == list(range(size))
    assert await second == list(range(size))
    assert most == coalescing.WORK_AT_ONCE
    assert [bundle for bundle, _ in started] == ["first"] * size + ["second"] * size
