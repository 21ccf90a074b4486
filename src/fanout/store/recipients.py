"""Recipients: users and their active devices, as delivery batches carry them.

Every read returns rows of ``(user_id, platform, wire, held_back)``, ``wire`` being the
device's JSON array already written by PostgreSQL (NULL for a user without an active
device, and for one the audience rules hold back: then ``held_back`` names the reason).
Each read applies the rules for the event ``event_id`` of category ``category``.
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

    def parameters(self, at: datetime | None) -> tuple[object, ...]:
        """The statement's schedule parameters, in queries._schedule_parameters' order."""
        return (
            None if self.zones_in is None else list(self.zones_in),
            None if self.zones_not_in is None else list(self.zones_not_in),
            self.default_zone,
            self.deferred_wave,
            self.quiet_hours,
            at or datetime.now(UTC),
            self.recheck_deferred,
        )


async def topic_recipients_page(
    conn: asyncpg.Connection,
    *,
    topic_id: int,
    after_user_id: int,
    before_user_id: int,
    limit: int,
    event_id: int,
    category: str | None,
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
        category,
        *page_filter.parameters(at),
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
    event_id: int,
    category: str | None,
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
        event_id,
        category,
        *page_filter.parameters(at),
    )
    return rows


async def batch_recipients(
    conn: asyncpg.Connection,
    *,
    topic_id: int,
    first_user_id: int,
    last_user_id: int,
    event_id: int,
    category: str | None,
    page_filter: PageFilter = PageFilter(),  # frozen: one default shared safely
) -> list[asyncpg.Record]:
    """A lost batch re-read: the topic's subscribers from ``first_user_id`` to
    ``last_user_id`` (both included) with their devices, filtered as the fan-out's page
    (``BATCH_RECIPIENTS``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        queries.BATCH_RECIPIENTS,
        topic_id,
        first_user_id,
        last_user_id,
        event_id,
        category,
        *page_filter.parameters(None),
    )
    return rows


async def devices_by_id(
    conn: asyncpg.Connection, *, device_ids: Sequence[int]
) -> list[asyncpg.Record]:
    """A retry batch re-read: those of ``device_ids`` still active (``DEVICES_BY_ID``)."""
    rows: list[asyncpg.Record] = await conn.fetch(queries.DEVICES_BY_ID, device_ids)
    return rows
