"""Paced sends (issue #24): an event's devices go out at no more than ``throttle_per_minute``
a minute, across every worker, paced from PostgreSQL.

The fan-out packs a paced event's devices into small batches (a second's worth of the rate:
``batch_devices``) and records each with the time it may go, ``not_before``: the event's
pace clock (``events.paced_until``, moved on by every checkpoint in the same transaction,
whichever shard or worker writes it) plus the devices before it in the checkpoint over the
rate (``schedule``). Nothing of it goes to SQS then: the pacer's sweep
(``runtime.reconciler.release_paced``) sends a batch once its ``not_before`` has passed, so
the queue only carries what is due and a restart or a redelivery changes nothing of the
schedule. A shard reads at most ``read_ahead`` of devices ahead of now, then parks at its
checkpoint until the clock is that close again (``resume_at``): the rest is not read early.

Plain functions over plain values: tested in tests/unit/test_pacing.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

# A batch holds at most a second's worth of the rate, so that the sweep (every second)
# releases the minute's devices evenly rather than in a few large bursts.
SECONDS_PER_BATCH = 1.0


def batch_devices(throttle_per_minute: int, ceiling: int) -> int:
    """The most devices a paced batch holds: a second's worth of the rate, at least 1, at
    most ``ceiling`` (the unpaced batch's limit)."""
    per_second = int(throttle_per_minute * SECONDS_PER_BATCH // 60)
    return max(1, min(ceiling, per_second))


def duration(devices: int, throttle_per_minute: int) -> timedelta:
    """How long ``devices`` take at the rate."""
    return timedelta(minutes=devices / throttle_per_minute)


def slot_start(clock: datetime | None, now: datetime) -> datetime:
    """Where devices scheduled now start: at the end of what is scheduled already, or now
    if that is past (an idle clock does not bank a burst: a wave released later, or the
    recipients whose quiet hours ended, are paced from their release)."""
    return now if clock is None or clock < now else clock


def schedule(
    start: datetime, batch_sizes: Sequence[int], throttle_per_minute: int
) -> list[datetime]:
    """The ``not_before`` of each batch, in order: ``start`` plus the devices before it
    over the rate. The next batch after them starts at ``start + duration(sum)``."""
    times = []
    before = 0
    for size in batch_sizes:
        times.append(start + duration(before, throttle_per_minute))
        before += size
    return times


def resume_at(clock: datetime, read_ahead: timedelta) -> datetime:
    """When a shard parked ahead of the clock reads on: ``read_ahead`` before the end of
    what is scheduled."""
    return clock - read_ahead


def far_enough_ahead(clock: datetime | None, now: datetime, read_ahead: timedelta) -> bool:
    """Whether what is scheduled reaches ``read_ahead`` past now: the shard parks."""
    return clock is not None and clock - now >= read_ahead
