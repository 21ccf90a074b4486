"""Recipients: users and their active devices, as delivery batches carry them.

Every read returns rows of ``(user_id, platform, wire, held_back)``, ``wire`` being the
device's JSON array already written by PostgreSQL (NULL for a user without an active
device, and for one the audience rules hold back: then ``held_back`` names the reason).
Each read applies the rules for the event ``event_id`` of category ``category``.
The rows are the asyncpg Records themselves, handed to the batch packer as they come:
this is the fan-out's hot path, and nothing is done per row in Python on the way.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from fanout.store.fragments import (
    DEVICE_PLATFORM,
    DEVICE_WIRE,
    filtered_recipients_query,
    recipients_query,
    schedule_parameters,
)

# Indexes: subscriptions_pkey (index-only range scan, the keyset page: user_id > cursor),
# then per subscriber the audience rules' probes (above) and an index probe of devices by
# user (devices_active_by_user). LATERAL keeps it a nested loop of such probes: with a
# plain join the planner hash-joined a sequential scan of every device (12 of the 14 ms a
# page took at 120,000 devices, and growing with the table). The LIMIT applies to
# subscribers, so a page never splits one user's devices; users without an active device
# come back once with NULLs so that the cursor still moves past them. $5: the event, $6:
# its category.
TOPIC_RECIPIENTS_PAGE = recipients_query(
    """SELECT sub.user_id FROM subscriptions AS sub
    WHERE sub.topic_id = $1 AND sub.user_id > $2 AND sub.user_id < $3 {wave_members}
    ORDER BY sub.user_id
    LIMIT $4""",
    topic="$1",
    event="$5",
    category="$6",
    **schedule_parameters(7),
)

# The same page for an event with a tag filter: the same parameters and rows, the filter
# decided for the page at once (fragments.filtered_recipients_query).
TOPIC_FILTERED_PAGE = filtered_recipients_query(
    """SELECT sub.user_id FROM subscriptions AS sub
    WHERE sub.topic_id = $1 AND sub.user_id > $2 AND sub.user_id < $3 {wave_members}
    ORDER BY sub.user_id
    LIMIT $4""",
    topic="$1",
    event="$5",
    category="$6",
    **schedule_parameters(7),
)

# Indexes: users_pkey, then as above. The 1:1 send: one user's devices, same columns; no
# topic, so no mute applies. $3: the event, $4: its category.
USER_RECIPIENTS = recipients_query(
    """SELECT sub.user_id
    FROM (SELECT id AS user_id FROM users WHERE id = $1 AND id > $2) AS sub
    WHERE true {wave_members}""",
    topic="NULL",
    event="$3",
    category="$4",
    **schedule_parameters(5),
)

# Indexes: users_by_app (app_id, id), an index-only range scan (the keyset page: id >
# cursor), then the filter decided for the page at once and, for the users it matches, the
# audience rules' probes and devices_active_by_user, as the topic's filtered page. An event
# to every user of its app its tag filter matches (it always has one; no topic: no mute
# applies); those the filter leaves out come back held back as `filtered`. $1: the app, $5:
# the event, $6: its category.
APP_RECIPIENTS_PAGE = filtered_recipients_query(
    """SELECT sub.user_id FROM (SELECT id AS user_id FROM users WHERE app_id = $1) AS sub
    WHERE sub.user_id > $2 AND sub.user_id < $3 {wave_members}
    ORDER BY sub.user_id
    LIMIT $4""",
    topic="NULL",
    event="$5",
    category="$6",
    **schedule_parameters(7),
)

# Index: deferred_recipients_pkey. A page's deferred users and when each window ends, one
# statement per page, never a round trip per recipient; a page read again after a crash
# records nobody twice. (Recorded in the page statement itself, as a data-modifying CTE,
# PostgreSQL materialised the page: 1.5-2x the time of a page.)
DEFER_RECIPIENTS = """
INSERT INTO deferred_recipients (event_id, user_id, release_at)
SELECT $1, d.user_id, d.release_at
FROM unnest($2::bigint[], $3::timestamptz[]) AS d (user_id, release_at)
ON CONFLICT DO NOTHING
"""

# Indexes: subscriptions_pkey, the audience rules' and devices_active_by_user. A batch
# whose message was lost, re-read from PostgreSQL: its closed range of users, as the
# fan-out read them, the same users held back (the event's own sends do not count toward
# its caps). $4: the event, $5: its category.
BATCH_RECIPIENTS = recipients_query(
    """SELECT sub.user_id FROM subscriptions AS sub
    WHERE sub.topic_id = $1 AND sub.user_id BETWEEN $2 AND $3 {wave_members}""",
    topic="$1",
    event="$4",
    category="$5",
    **schedule_parameters(6),
)

# As BATCH_RECIPIENTS, over the app's users (users_by_app): a lost batch of an event to
# every user of its app its filter matches. $1: the app, $4: the event, $5: its category.
APP_BATCH_RECIPIENTS = recipients_query(
    """SELECT sub.user_id FROM (SELECT id AS user_id FROM users WHERE app_id = $1) AS sub
    WHERE sub.user_id BETWEEN $2 AND $3 {wave_members}""",
    topic="NULL",
    event="$4",
    category="$5",
    **schedule_parameters(6),
)

# Index: devices_pkey. A retry batch re-read from its recorded device ids.
DEVICES_BY_ID = f"""
SELECT d.user_id, {DEVICE_PLATFORM} AS platform, {DEVICE_WIRE} AS wire
FROM devices AS d
WHERE d.id = ANY($1::bigint[]) AND d.active
"""


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
        """The statement's schedule parameters, in fragments.schedule_parameters' order."""
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
    tag_filtered: bool = False,
) -> list[asyncpg.Record]:
    """The next page of the topic's subscribers between ``after_user_id`` and
    ``before_user_id`` (both excluded) that ``page_filter`` lets in: up to ``limit`` users,
    each with their devices, in user order, a fourth column: why a user is held back
    (NULL: sent to), and a fifth: for those deferred by their quiet hours at ``at``
    (default now), when their window ends (``TOPIC_RECIPIENTS_PAGE``; with
    ``tag_filtered``, an event with a tag filter: ``TOPIC_FILTERED_PAGE``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        TOPIC_FILTERED_PAGE if tag_filtered else TOPIC_RECIPIENTS_PAGE,
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
    await conn.execute(DEFER_RECIPIENTS, event_id, user_ids, release_at)


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
        USER_RECIPIENTS,
        user_id,
        after_user_id,
        event_id,
        category,
        *page_filter.parameters(at),
    )
    return rows


@dataclass(frozen=True, slots=True)
class UserRead:
    """One 1:1 event's read of its user's devices (``user_recipients``' arguments)."""

    event_id: int
    user_id: int
    after_user_id: int
    category: str | None
    page_filter: PageFilter


async def users_recipients(
    conn: asyncpg.Connection, *, reads: Sequence[UserRead]
) -> dict[int, list[asyncpg.Record]]:
    """``user_recipients`` for each read, by event: pipelined, one round trip for events of
    distinct users (the rows name their user, so each is told apart), one more for each
    further event of a user already read in the round."""
    found: dict[int, list[asyncpg.Record]] = {read.event_id: [] for read in reads}
    left = list(reads)
    while left:
        round_: list[UserRead] = []
        later: list[UserRead] = []
        users: set[int] = set()
        for read in left:
            (later if read.user_id in users else round_).append(read)
            users.add(read.user_id)
        rows = await conn.fetchmany(
            USER_RECIPIENTS,
            [
                (
                    r.user_id,
                    r.after_user_id,
                    r.event_id,
                    r.category,
                    *r.page_filter.parameters(None),
                )
                for r in round_
            ],
        )
        event_of_user = {r.user_id: r.event_id for r in round_}
        for row in rows:
            found[event_of_user[row[0]]].append(row)
        left = later
    return found


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
        BATCH_RECIPIENTS,
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
    rows: list[asyncpg.Record] = await conn.fetch(DEVICES_BY_ID, device_ids)
    return rows


async def app_recipients_page(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    after_user_id: int,
    before_user_id: int,
    limit: int,
    event_id: int,
    category: str | None,
    page_filter: PageFilter = PageFilter(),  # frozen: one default shared safely
) -> list[asyncpg.Record]:
    """``topic_recipients_page`` over every user of the app (an event with a tag filter and
    no topic) (``APP_RECIPIENTS_PAGE``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        APP_RECIPIENTS_PAGE,
        app_id,
        after_user_id,
        before_user_id,
        limit,
        event_id,
        category,
        *page_filter.parameters(None),
    )
    return rows


async def app_batch_recipients(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    first_user_id: int,
    last_user_id: int,
    event_id: int,
    category: str | None,
    page_filter: PageFilter = PageFilter(),  # frozen: one default shared safely
) -> list[asyncpg.Record]:
    """``batch_recipients`` over every user of the app (``APP_BATCH_RECIPIENTS``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        APP_BATCH_RECIPIENTS,
        app_id,
        first_user_id,
        last_user_id,
        event_id,
        category,
        *page_filter.parameters(None),
    )
    return rows
