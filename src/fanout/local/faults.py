"""What fault runs share: where an event is, when it is over, and poison to feed the queues.

A fault is inflicted when the system has reached a point, not at a time: "during
fan-out" is an event whose shards have handed batches to SQS but are not all done;
"during delivery" is judged at the sink. ``EventSnapshot`` reads the first from the
database in one statement; ``bench/chaos.py`` and ``tests/faults/`` poll it.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass

import asyncpg
import orjson

from fanout.store.lifecycle import FANNING, TERMINAL_STATES, EventState

# An event in one of these states will change no more. (Before they existed an event
# ended at 'fanned_out', which says only that its batches were handed to SQS.)
TERMINAL_STATUSES = TERMINAL_STATES

# Indexes: events_pkey, fanout_shards_pkey, delivery_batches_pkey. A batch is unsettled
# while it is not done, or when it handed devices to a retry batch that has no row yet
# (the retry is still on the queue, delayed).
EVENT_STATE = """
SELECT e.status,
       (SELECT count(*) FROM fanout_shards WHERE event_id = e.id) AS shards,
       (SELECT count(*) FROM fanout_shards WHERE event_id = e.id AND status = 'done')
           AS shards_done,
       (SELECT coalesce(sum(batches), 0) FROM fanout_shards WHERE event_id = e.id)
           AS batches_sent,
       (SELECT count(*) FROM delivery_batches WHERE event_id = e.id) AS batch_rows,
       (SELECT count(*) FROM delivery_batches AS b
        WHERE b.event_id = e.id
          AND (b.status <> 'done'
               OR (b.retried > 0 AND NOT EXISTS (
                   SELECT 1 FROM delivery_batches AS r
                   WHERE r.event_id = b.event_id
                     AND r.batch_key = split_part(b.batch_key, '/r', 1) || '/r' || (b.attempt + 1)
               ))))
           AS unsettled_batches,
       (SELECT coalesce(sum(sent), 0) FROM delivery_batches WHERE event_id = e.id) AS sent
FROM events AS e
WHERE e.id = $1
"""


@dataclass(frozen=True, slots=True)
class EventSnapshot:
    status: str
    shards: int
    shards_done: int
    batches_sent: int  # handed to SQS by the fan-out stage, as its checkpoints say
    batch_rows: int
    unsettled_batches: int
    sent: int

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def mid_fan_out(self) -> bool:
        """Fanning out, some batches on the queue, some shards not finished."""
        return (
            self.status == EventState.FANNING_OUT
            and self.batches_sent > 0
            and self.shards_done < self.shards
        )

    @property
    def fanned_out(self) -> bool:
        """Every batch handed to SQS: the fan-out stage is over, whatever came after."""
        return self.status not in FANNING

    @property
    def settled(self) -> bool:
        """Fanned out and every batch that has a row is done with no retry pending: all
        that today's code will do, though the event is not terminal and batches lost on
        the way have no row."""
        return self.status == EventState.FANNED_OUT and self.unsettled_batches == 0

    def progress(self) -> tuple[object, ...]:
        """Changes whenever the pipeline does something for the event."""
        return (
            self.status,
            self.shards_done,
            self.batches_sent,
            self.batch_rows,
            self.unsettled_batches,
            self.sent,
        )


async def read_event_snapshot(conn: asyncpg.Connection, event_id: int) -> EventSnapshot | None:
    row = await conn.fetchrow(EVENT_STATE, event_id)
    return None if row is None else EventSnapshot(**dict(row))


async def schema_has_terminal_states(conn: asyncpg.Connection) -> bool:
    """Whether events can end (issue #10's schema); before it, 'fanned_out' was the last
    state, and a run could only be judged settled."""
    check = await conn.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1",
        "events_status_check",
    )
    return check is not None and "'delivered'" in check


class EventWatch:
    """An event's state read over one connection, again and again; while the database is
    away (restarting) a read is None rather than an error, and the next one reconnects."""

    def __init__(self, dsn: str, event_id: int) -> None:
        self.dsn = dsn
        self.event_id = event_id
        self._conn: asyncpg.Connection | None = None

    async def snapshot(self) -> EventSnapshot | None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.dsn, timeout=2)
            return await read_event_snapshot(self._conn, self.event_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
        self._conn = None


def poison_bodies(event_id: int) -> list[str]:
    """Message bodies no worker can process, several about the running event.

    None of them can push anything: each fails decoding, or names an event that
    does not exist (the fan-out stage finds no event; the delivery stage's claim
    breaks the foreign key), so each ends in a dead-letter queue.
    """
    unknown = 2**62
    bomb = base64.b64encode(zlib.compress(b" " * (20 * 1024 * 1024), 9)).decode()
    note = {"title": "poison"}

    def delivery(event: int, **fields: object) -> str:
        doc = {"kind": "delivery", "v": 2, "event": event, "key": "poison", "attempt": 0}
        return orjson.dumps({**doc, "notification": note, **fields}).decode()

    return [
        "not JSON at all",
        "[1, 2, 3]",
        orjson.dumps({"kind": "fanout", "v": 99, "event": event_id}).decode(),
        orjson.dumps({"kind": "fanout", "v": 2, "event": unknown, "shard": None}).decode(),
        orjson.dumps({"kind": "delivery", "v": 2, "event": event_id}).decode(),
        delivery(event_id, devices_z="!!! not base64 !!!"),
        delivery(event_id, devices_z=bomb),  # 20 MiB of JSON once inflated
        delivery(unknown, devices={"apns": [[1, "poison-token", "en"]]}),
    ]
