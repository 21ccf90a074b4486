"""An event's progress and outcome, summed from its shards and batches on read.

One model for every reader (``GET /v1/events/{id}``, ``fanout status``, the demo), so
they print the same fields with the same types.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, time
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from pydantic import BaseModel, Field, WithJsonSchema

from fanout.stages.opens import Opens, event_opens
from fanout.store import events
from fanout.store.lifecycle import TERMINAL_STATES, EventState


class Wave(BaseModel):
    wave: int
    kind: Literal["local", "deferred"] = Field(
        description="local: the subscribers of these zones at deliver_at_local; deferred: "
        "recipients whose quiet hours ended by release_at."
    )
    release_at: datetime
    zones: list[str]
    catch_all: bool = Field(description="Also every subscriber whose zone is in no other wave.")
    status: Literal["held", "planned", "dropped"]


class Deferred(BaseModel):
    """Recipients held by their quiet hours (quiet_hours: defer), and when."""

    waiting: int = Field(description="Not yet released: their window has not ended.")
    released: int = Field(description="Fanned out in a deferred wave once their window ended.")
    dropped: int = Field(description="Never released: the event was cancelled or expired.")
    next_release_at: datetime | None = Field(description="When the first waiting one is due.")
    last_release_at: datetime | None = Field(description="When the last of them is due.")


class Schedule(BaseModel):
    """The publish options that hold or stop the event."""

    send_at: datetime | None
    # Written "09:00:00", which JSON Schema's "time" format (RFC 3339: with an offset) is not.
    deliver_at_local: (
        Annotated[time, WithJsonSchema({"type": "string", "pattern": r"^\d\d:\d\d:\d\d$"})] | None
    )
    quiet_hours: Literal["defer", "drop", "ignore"]
    expires_at: datetime | None
    cancelled_at: datetime | None


class Pacing(BaseModel):
    """A paced event (throttle_per_minute): how far it has gone, and when it ends."""

    throttle_per_minute: int
    sent: int = Field(description="Devices sent so far (accepted by the push service).")
    scheduled: int = Field(description="Devices the fan-out has scheduled so far.")
    expected_end: datetime | None = Field(
        description="When the last device scheduled goes; final once the fan-out has read "
        "every subscriber (final), else the end of what is scheduled so far."
    )
    final: bool = Field(description="The fan-out has scheduled every device: expected_end holds.")


class LiveActivityStatus(BaseModel):
    """A Live Activity update: which activity, what it did, and Apple's budget."""

    activity_id: str
    event: Literal["start", "update", "end"]
    timestamp: int = Field(description="aps.timestamp: the device keeps the newest.")
    priority: Literal[5, 10]
    priority_10_last_hour: int = Field(
        description="The activity's priority-10 updates in the hour up to this one: Apple "
        "budgets them per hour and throttles an app past its budget; 5 is not budgeted."
    )


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
        "(e.g. opted_out, muted, capped; deferred: inside their quiet hours, sent later "
        "(see deferred); quiet_hours: inside them, dropped), subscribers a cancelled or "
        "expired fan-out did not read (cancelled, expired), and devices of batches not "
        "sent because the event was cancelled or expired while they waited (cancelled, "
        "expired); for a Live Activity update, tokens a newer update of the activity "
        "reached instead (superseded: never lost, not a failure)."
    )
    schedule: Schedule
    waves: list[Wave] = Field(description="deliver_at_local waves and deferred releases.")
    deferred: Deferred
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
    live_activity: LiveActivityStatus | None = None
    opens: Opens | None = Field(
        default=None,
        description="Opens and clicks the apps reported (POST /v1/opens), with the open "
        "rate and the time to open, in all and per provider.",
    )
    pacing: Pacing | None = Field(default=None, description="Set for a paced event.")


async def load_event_status(
    conn: asyncpg.Connection | asyncpg.Pool, event_id: int, *, app_id: int | None = None
) -> EventStatus | None:
    """The event's status; None if there is no such event, or, with ``app_id``, none of
    that app's (the API's answer for another app's event). None: the operator's view."""
    if app_id is None:
        row = await events.event_progress(conn, event_id=event_id)
    else:
        row = await events.event_progress_in_app(conn, app_id=app_id, event_id=event_id)
    if row is None:
        return None
    status = event_status_from_row(row)
    status.opens = await event_opens(conn, event_id=event_id, sent=status.sent)
    return status


def event_status_from_row(row: Mapping[str, Any]) -> EventStatus:
    """The status from a row of EVENT_PROGRESS's columns (the console's list has them too)."""
    # Devices of batches held back at delivery (cancelled, expired) have their outcome.
    accounted = (
        row["sent"] + row["failed"] + row["invalid"] + row["skipped"] + row["held_back_devices"]
    )
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
        schedule=Schedule(
            send_at=row["send_at"],
            deliver_at_local=row["deliver_at_local"],
            quiet_hours=row["quiet_hours"],
            expires_at=row["expires_at"],
            cancelled_at=row["cancelled_at"],
        ),
        waves=[Wave.model_validate(wave) for wave in _json(row["waves"])],
        deferred=Deferred(
            waiting=row["deferred_waiting"],
            released=row["deferred_released"],
            dropped=row["deferred_dropped"],
            next_release_at=row["deferred_next_release_at"],
            last_release_at=row["deferred_last_release_at"],
        ),
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
        live_activity=_live_activity(row),
        pacing=_pacing(row),
    )


def _pacing(row: Mapping[str, Any]) -> Pacing | None:
    throttle = row.get("throttle_per_minute")
    if throttle is None:
        return None
    return Pacing(
        throttle_per_minute=throttle,
        sent=row["sent"],
        scheduled=row["paced_devices"],
        expected_end=row["paced_until"],
        final=row["fanned_out_at"] is not None,
    )


def _live_activity(row: Mapping[str, Any]) -> LiveActivityStatus | None:
    key = row.get("live_activity_key")
    if key is None:
        return None
    block = _json(row["live_activity"])
    return LiveActivityStatus(
        activity_id=key,
        event=block["event"],
        timestamp=block.get("timestamp", 0),
        priority=10 if row["priority"] == "high" else 5,
        priority_10_last_hour=row["priority_10_last_hour"],
    )


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value
