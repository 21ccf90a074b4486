"""Opens and clicks: what ``POST /v1/opens`` records, and each event's summary of them.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

# Index: events_pkey, devices_pkey, opens_pkey, open_actions_pkey. One statement, so an
# open and its click are one atomic fact. The event counts only while it is within the
# open window ($5 seconds after it was published): a token replayed later, or one of an
# event deleted since, inserts nothing. The time given by the app is kept between the
# push's send time and now (a phone's clock is not trusted further). ON CONFLICT DO
# NOTHING: a token counts once, whoever posts it first (10,000 posts of 5,000 tokens at
# once: 5,000 rows).
RECORD_OPEN = """
WITH event AS (
    SELECT e.id, e.app_id, greatest(e.created_at, e.send_at) AS sent_from
    FROM events e
    WHERE e.id = $1 AND e.created_at > now() - make_interval(secs => $5)
), opening AS (
    SELECT event.*, least(greatest(coalesce($4::timestamptz, now()), sent_from), now()) AS at
    FROM event
), opened AS (
    INSERT INTO opens (event_id, device_id, app_id, platform, action, opened_at,
                       seconds_to_open)
    SELECT o.id, $2, o.app_id,
           (SELECT d.platform FROM devices d WHERE d.id = $2 AND d.app_id = o.app_id),
           $3, o.at, extract(epoch FROM o.at - o.sent_from)
    FROM opening o
    ON CONFLICT (event_id, device_id) DO NOTHING
    RETURNING app_id
), clicked AS (
    INSERT INTO open_actions (event_id, device_id, action, clicked_at)
    SELECT o.id, $2, $3, o.at FROM opening o WHERE $3::text IS NOT NULL
    ON CONFLICT (event_id, device_id, action) DO NOTHING
    RETURNING 1
)
SELECT (SELECT app_id FROM event) AS app_id,
       EXISTS (SELECT FROM opened) AS opened,
       EXISTS (SELECT FROM clicked) AS clicked
"""

# Index: opens_pkey (event_id first). Per platform and the whole event (platform NULL from
# ROLLUP's total row; 'unknown' for opens of a device gone before it opened): the count,
# the percentiles of the time to open, and the counts in fixed buckets of it.
OPEN_SUMMARY = """
SELECT GROUPING(coalesce(platform, 'unknown')) = 1 AS total,
       coalesce(platform, 'unknown') AS platform,
       count(*) AS opened,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds_to_open) AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY seconds_to_open) AS p90,
       count(*) FILTER (WHERE seconds_to_open < 60) AS under_1m,
       count(*) FILTER (WHERE seconds_to_open >= 60 AND seconds_to_open < 600) AS under_10m,
       count(*) FILTER (WHERE seconds_to_open >= 600 AND seconds_to_open < 3600) AS under_1h,
       count(*) FILTER (WHERE seconds_to_open >= 3600 AND seconds_to_open < 86400)
           AS under_1d,
       count(*) FILTER (WHERE seconds_to_open >= 86400) AS later
FROM opens
WHERE event_id = $1
GROUP BY ROLLUP (coalesce(platform, 'unknown'))
"""

# Index: open_actions_pkey (event_id first).
ACTION_CLICKS = """
SELECT action, count(*) AS clicks FROM open_actions WHERE event_id = $1 GROUP BY action
"""


@dataclass(frozen=True, slots=True)
class Recorded:
    app_id: int | None  # None: no such event within its open window; nothing recorded
    opened: bool  # this post was the device's first open of the event
    clicked: bool  # this post recorded a click on an action not recorded before


async def record_open(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    device_id: int,
    action: str | None,
    opened_at: datetime | None,
    window_seconds: float,
) -> Recorded:
    """RECORD_OPEN: the device's open of the event (once), and its click on ``action``."""
    row = await conn.fetchrow(RECORD_OPEN, event_id, device_id, action, opened_at, window_seconds)
    assert row is not None  # a SELECT of scalars always has its row
    return Recorded(app_id=row["app_id"], opened=row["opened"], clicked=row["clicked"])


async def open_summary(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int
) -> list[asyncpg.Record]:
    """OPEN_SUMMARY: one row per platform and one total row (``total``), none if unopened."""
    return list(await conn.fetch(OPEN_SUMMARY, event_id))


async def action_clicks(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int
) -> dict[str, int]:
    """ACTION_CLICKS: the devices that clicked each named action."""
    return {row["action"]: row["clicks"] for row in await conn.fetch(ACTION_CLICKS, event_id)}
