"""Recipients: users and their active devices, as delivery batches carry them.

Every read returns rows of ``(user_id, platform, wire)``, ``wire`` being the device's
JSON array already written by PostgreSQL (NULL for a user without an active device).
The rows are the asyncpg Records themselves, handed to the batch packer as they come:
this is the fan-out's hot path, and nothing is done per row in Python on the way.

Every function runs one statement of ``queries.py`` (named in its docstring, where the
index it relies on is written) and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from fanout.store import queries


@dataclass(frozen=True, slots=True)
class PageFilter:
    """What an event's page holds back or leaves out besides its range: the wave being fanned
    out (its zones, or the zones it is not in, or a deferred wave's number), the quiet-hours
    policy, and the instant quiet windows are judged at. The default: everyone, now."""

    zones_in: Sequence[str] | None = None
    zones_not_in: Sequence[str] | None = None
    deferred_wave: int | None = None
    quiet_hours: str = "ignore"
    default_zone: str = "UTC"
    # Read again (a lost batch, a resumed shard): users deferred before stay deferred.
    recheck_deferred: bool = False


async def topic_recipients_page(
    conn: asyncpg.Connection,
    *,
    topic_id: int,
    after_user_id: int,
    before_user_id: int,
    limit: int,
    event_id: int = 0,
    page_filter: PageFilter = PageFilter(),  # frozen: one default shared safely
    at: datetime | None = None,
) -> list[asyncpg.Record]:
    """The next page of the topic's subscribers between ``after_user_id`` and
    ``before_user_id`` (both excluded) that ``page_filter`` lets in: up to ``limit`` users,
    each with their devices, in user order, a fourth column: why a user is held back
    (NULL: sent to), and a fifth: for those deferred by their quiet hours at ``at``
    (default now), when their window ends (``TOPIC_RECIPIENTS_PAGE``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        queries.TOPIC_RECIPIENTS_PAGE,
        topic_id,
        after_user_id,
        before_user_id,
        limit,
        event_id,
        page_filter.zones_in,
        page_filter.zones_not_in,
        page_filter.default_zone,
        page_filter.deferred_wave,
        page_filter.quiet_hours,
        at or datetime.now(UTC),
        page_filter.recheck_deferred,
    )
    return rows


async def defer_recipients(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    user_ids: Sequence[int],
    release_at: Sequence[datetime],
) -> None:
    """Record users of a page held by their quiet hours, each with the instant their window
    ends; none twice (``DEFER_RECIPIENTS``)."""
    await conn.execute(queries.DEFER_RECIPIENTS, event_id, user_ids, release_at)


async def user_recipients(
    conn: asyncpg.Connection,
    *,
    user_id: int,
    after_user_id: int,
    event_id: int = 0,
    page_filter: PageFilter = PageFilter(),  # frozen: one default shared safely
    at: datetime | None = None,
) -> list[asyncpg.Record]:
    """One user's devices, for a 1:1 send, as ``topic_recipients_page`` reads a topic's
    subscribers (the same columns and filter); nothing once ``after_user_id`` is past them
    (``USER_RECIPIENTS``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        queries.USER_RECIPIENTS,
        user_id,
        after_user_id,
        _NO_USER_AFTER,
        1,
        event_id,
        page_filter.zones_in,
        page_filter.zones_not_in,
        page_filter.default_zone,
        page_filter.deferred_wave,
        page_filter.quiet_hours,
        at or datetime.now(UTC),
        page_filter.recheck_deferred,
    )
    return rows


_NO_USER_AFTER = 2**63 - 1


async def devices_by_id(
    conn: asyncpg.Connection, *, device_ids: Sequence[int]
) -> list[asyncpg.Record]:
    """A retry batch re-read: those of ``device_ids`` still active (``DEVICES_BY_ID``)."""
    rows: list[asyncpg.Record] = await conn.fetch(queries.DEVICES_BY_ID, device_ids)
    return rows
