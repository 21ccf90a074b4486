"""An event's progress and outcome, summed from its shards and batches on read.

One model for every reader (``GET /v1/events/{id}``, ``fanout status``, the demo), so
they print the same fields with the same types.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from fanout import store

EventState = Literal[
    "pending",  # committed; its fan-out message not yet sent
    "enqueued",  # its fan-out message is on the queue
    "fanning_out",  # shards are reading subscribers and sending batches
    "fanned_out",  # every batch is on the queue; some are not yet delivered
    "delivered",  # every device was sent to (dead tokens aside)
    "partially_delivered",  # some devices were sent to, some failed or were skipped
    "failed",  # no device was sent to (see failure_reasons and last_error)
    "no_recipients",  # nobody subscribed with an active device
]
TERMINAL_STATES = frozenset({"delivered", "partially_delivered", "failed", "no_recipients"})


class EventStatus(BaseModel):
    event_id: int
    status: EventState
    terminal: bool = Field(description="True once the event has ended; nothing more is sent.")
    recipients: int = Field(description="Subscribers read by the fan-out.")
    devices: int = Field(description="Active devices of those subscribers.")
    sent: int = Field(description="Accepted by the push service.")
    failed: int = Field(description="Given up, by reason in failure_reasons.")
    invalid: int = Field(description="Dead tokens, deactivated.")
    skipped: int = Field(description="No push provider configured for the platform.")
    pending: int = Field(description="Devices without an outcome yet.")
    failure_reasons: dict[str, int]
    held_back: dict[str, int] = Field(
        description="Not sent on purpose, by reason: recipients the fan-out filtered out "
        "(e.g. opted_out, muted, capped, deferred) and devices held back at delivery "
        "(e.g. expired, cancelled)."
    )
    held_by_breaker: dict[str, int] = Field(
        default_factory=dict,
        description="Devices not sent yet because their provider credential was refused (a "
        "config error opened its breaker), by that error; they are still pending and are "
        "sent once a probe finds the credential working again.",
    )
    shards: int
    shards_done: int
    shards_failed: int = Field(description="Shards given up by the reconciler.")
    batches: int
    batches_done: int
    last_error: str | None = Field(description="Why the event failed as a whole, if it did.")
    started_at: datetime
    fanned_out_at: datetime | None
    finished_at: datetime | None


async def load_event_status(
    conn: asyncpg.Connection | asyncpg.Pool, event_id: int
) -> EventStatus | None:
    row = await store.event_progress(conn, event_id=event_id)
    return None if row is None else event_status_from_row(row)


def event_status_from_row(row: Mapping[str, Any]) -> EventStatus:
    """The status from a row of EVENT_PROGRESS's columns (the console's list has them too)."""
    accounted = row["sent"] + row["failed"] + row["invalid"] + row["skipped"]
    return EventStatus(
        event_id=row["id"],
        status=row["status"],
        terminal=row["status"] in TERMINAL_STATES,
        recipients=row["recipients"],
        devices=row["devices"],
        sent=row["sent"],
        failed=row["failed"],
        invalid=row["invalid"],
        skipped=row["skipped"],
        pending=max(0, row["devices"] - accounted),
        failure_reasons=row["failure_reasons"],
        held_back=row["held_back"],
        held_by_breaker=row["held_by_breaker"],
        shards=row["shards"],
        shards_done=row["shards_done"],
        shards_failed=row["shards_failed"],
        batches=row["batches"],
        batches_done=row["batches_done"],
        last_error=row["last_error"],
        started_at=row["created_at"],
        fanned_out_at=row["fanned_out_at"],
        finished_at=row["finished_at"],
    )
