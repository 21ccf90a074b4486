"""What a shard's pages let through: its wave's recipients, quiet hours applied as its event
asks. The fan-out reads a shard's pages with it, and the delivery stage re-reads a lost
batch's users with the same filter, so a re-read never sends early or twice; it lives
below both stages rather than in either.
"""

from __future__ import annotations

import asyncpg

from fanout.config import Settings
from fanout.store import events, waves
from fanout.store.recipients import PageFilter


async def page_filter_of(
    conn: asyncpg.Connection,
    event: events.Event,
    wave_no: int | None,
    settings: Settings,
    *,
    read_before: bool,
) -> PageFilter:
    """Whom this shard's pages let through: its wave's recipients, quiet hours applied as
    the event asks (a deferred wave's recipients are past their window: not again).
    ``read_before``: some of its users may have been read (and deferred) already."""
    if wave_no is None:
        return PageFilter(
            quiet_hours=event.quiet_hours,
            default_zone=settings.default_time_zone,
            recheck_deferred=read_before,
        )
    wave = await waves.wave_filter(conn, event_id=event.id, wave_no=wave_no)
    if wave.kind == "deferred":
        return PageFilter(deferred_wave=wave_no, quiet_hours="ignore")
    return PageFilter(
        zones_in=wave.zones_in,
        zones_not_in=wave.zones_not_in,
        quiet_hours=event.quiet_hours,
        default_zone=settings.default_time_zone,
        recheck_deferred=read_before,
    )
