"""Opens and clicks: a posted ``fo_open`` token checked and recorded once; each event's
opens summed for its status.

The token is verified with the key alone (open_tokens.py), before any statement: a forged
or altered token costs no database work. A genuine token whose event is gone or past the
open window (FANOUT_OPEN_WINDOW_DAYS) is recorded as nothing, and answered exactly as one
counted, so the answer never tells whether an event exists.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from pydantic import BaseModel, Field

from fanout.open_tokens import OpenTokens
from fanout.store import console, opens, webhooks


class TimeToOpen(BaseModel):
    """From the push's send (the event's publish, or its send_at) to the open."""

    p50_seconds: float | None
    p90_seconds: float | None
    buckets: dict[str, int] = Field(
        description="Opens by time to open: under_1m, under_10m, under_1h, under_1d, later."
    )


class ProviderOpens(BaseModel):
    opened: int
    sent: int = Field(description="Accepted by this provider (its batches' outcomes).")
    open_rate: float | None = Field(description="opened / sent; None before any was sent.")
    time_to_open: TimeToOpen


class Opens(BaseModel):
    """What the app reported back through ``POST /v1/opens``."""

    opened: int = Field(description="Devices that opened the push (each counted once).")
    open_rate: float | None = Field(description="opened / sent; None before anything was sent.")
    time_to_open: TimeToOpen
    by_provider: dict[str, ProviderOpens] = Field(
        description="Per platform (apns, fcm, webpush; unknown: a device deleted before "
        "it opened the push)."
    )
    clicks: dict[str, int] = Field(description="Devices that clicked each named action.")


_BUCKETS = ("under_1m", "under_10m", "under_1h", "under_1d", "later")


def _time_to_open(row: asyncpg.Record | None) -> TimeToOpen:
    if row is None:
        return TimeToOpen(p50_seconds=None, p90_seconds=None, buckets=dict.fromkeys(_BUCKETS, 0))
    return TimeToOpen(
        p50_seconds=row["p50"],
        p90_seconds=row["p90"],
        buckets={bucket: row[bucket] for bucket in _BUCKETS},
    )


def _rate(opened: int, sent: int) -> float | None:
    return round(opened / sent, 4) if sent else None


async def event_opens(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, sent: int
) -> Opens:
    """The event's opens, their rate against ``sent`` and their time to open, in all and
    per provider."""
    rows = await opens.open_summary(conn, event_id=event_id)
    total = next((row for row in rows if row["total"]), None)
    opened = total["opened"] if total is not None else 0
    sent_by_platform = {
        row["platform"]: row["devices"]
        for row in await console.event_outcomes_by_platform(conn, event_id=event_id)
        if row["outcome"] == "sent"
    }
    return Opens(
        opened=opened,
        open_rate=_rate(opened, sent),
        time_to_open=_time_to_open(total),
        by_provider={
            row["platform"]: ProviderOpens(
                opened=row["opened"],
                sent=sent_by_platform.get(row["platform"], 0),
                open_rate=_rate(row["opened"], sent_by_platform.get(row["platform"], 0)),
                time_to_open=_time_to_open(row),
            )
            for row in rows
            if not row["total"]
        },
        clicks=await opens.action_clicks(conn, event_id=event_id),
    )


async def record_open(
    pool: asyncpg.Pool,
    tokens: OpenTokens,
    token: str,
    *,
    action: str | None,
    opened_at: datetime | None,
    window_seconds: float,
) -> bool:
    """Record one posted open (and its click); whether it counted (False: already counted,
    or its event is gone or past the window). Raises ``InvalidOpenToken`` for a token this
    server did not mint, before touching the database."""
    found = tokens.verify(token)
    async with pool.acquire() as conn, conn.transaction():
        recorded = await opens.record_open(
            conn,
            event_id=found.event_id,
            device_id=found.device_id,
            action=action,
            opened_at=None if opened_at is None else _storable(opened_at),
            window_seconds=window_seconds,
        )
        if recorded.app_id is not None and (recorded.opened or recorded.clicked):
            await emit_push_opened(
                conn,
                app_id=recorded.app_id,
                event_id=found.event_id,
                opened=recorded.opened,
                action=action if recorded.clicked else None,
            )
    return recorded.opened


_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _storable(at: datetime) -> datetime:
    """A device's time within what PostgreSQL stores (year 1 at +14:00 is year 0 in UTC, which
    it refuses); the statement then keeps it between the send and now."""
    try:
        utc = at.astimezone(UTC)
    except OverflowError:  # past datetime's own range once in UTC
        return _EARLIEST if at.year < 5000 else _LATEST
    return min(max(utc, _EARLIEST), _LATEST)


async def emit_push_opened(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    event_id: int,
    opened: bool = True,
    action: str | None = None,
) -> None:
    """The ``push.opened`` webhook: called in the transaction that recorded a new open (or
    a new click on ``action``) of ``event_id``, so the outbox row and the open commit
    together. Aggregated, not one call per open: the open is added to the event's delivery
    not yet sent to each endpoint, or starts one, sent PUSH_OPENED_GATHER_SECONDS later
    with the opens and clicks of that while (``webhooks.count_opened``)."""
    await webhooks.count_opened(
        conn,
        app_id=app_id,
        event_id=event_id,
        opened=1 if opened else 0,
        action=action,
        gather_seconds=webhooks.PUSH_OPENED_GATHER_SECONDS,
    )
