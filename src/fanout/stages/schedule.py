"""When an event's recipients are due: local-time waves and quiet windows (pure).

``deliver_at_local`` ("09:00") is delivered in waves: the instant each time zone's clock
next shows that time, zones sharing an instant in one wave. Quiet hours are a local
window that may cross midnight (22:00-08:00). Both are computed with ``zoneinfo``, so a
wave on the night the clocks change lands on the right UTC instant; the fan-out's page
query applies the same window rule in SQL (``store.fragments``), and the tests hold
the two to each other.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

QuietHoursPolicy = str  # 'defer' | 'drop' | 'ignore' (the API's schema says so)

_LOCAL_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_local_time(text: str) -> time:
    """'09:00' (24-hour HH:MM) as a time; ValueError otherwise."""
    found = _LOCAL_TIME.match(text)
    if found is None:
        raise ValueError("must be a local time as HH:MM, 24-hour (e.g. 09:00)")
    return time(int(found[1]), int(found[2]))


def known_zone(name: str) -> zoneinfo.ZoneInfo | None:
    """The IANA zone, or None for a name zoneinfo does not know."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def next_local_instant(zone: zoneinfo.ZoneInfo, at: time, after: datetime) -> datetime:
    """The first UTC instant at or after ``after`` when ``zone``'s clocks read ``at``.

    A wall time the clocks skip or repeat is read with the offset in force before the change,
    as PostgreSQL reads one: 02:30 on the spring night in Berlin is 01:30 UTC (03:30 CEST),
    and a repeated one (autumn) is its first occurrence (fold 0).
    """
    local_day = after.astimezone(zone).date()
    for day in (local_day, local_day + timedelta(days=1), local_day + timedelta(days=2)):
        instant = _wall_to_utc(datetime.combine(day, at, tzinfo=zone))
        if instant >= after:
            return instant
    raise AssertionError("a wall time recurs within two days")


def _wall_to_utc(wall: datetime) -> datetime:
    # fold 0: the offset before a change, for a skipped or a repeated wall time alike (PEP
    # 495), which is PostgreSQL's rule for `timestamp AT TIME ZONE` too.
    return wall.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Wave:
    """Recipients of these zones, released at ``release_at`` (UTC). ``catch_all``: also
    every recipient whose zone is in no other wave (no zone, an unknown one, or one that
    appeared after publishing), i.e. the default zone's wave."""

    release_at: datetime
    zones: tuple[str, ...]
    catch_all: bool


def plan_waves(
    zones: Iterable[str], at: time, *, default_zone: str | None, after: datetime
) -> list[Wave]:
    """The waves of a ``deliver_at_local`` event: one per distinct UTC instant, in order.

    Zones zoneinfo does not know are left to the default zone's wave (the catch-all).
    Without a default zone (a 1:1 send to a user whose zone is known) there is none.
    """
    by_instant: dict[datetime, set[str]] = {}
    for name in {*zones} | ({default_zone} if default_zone else set()):
        zone = known_zone(name)
        if zone is not None:
            by_instant.setdefault(next_local_instant(zone, at, after), set()).add(name)
    return [
        Wave(instant, tuple(sorted(names)), catch_all=default_zone in names)
        for instant, names in sorted(by_instant.items())
    ]


def in_quiet_window(local: time, start: time, end: time) -> bool:
    """Is the local time inside [start, end)? A window whose end is before its start
    crosses midnight (22:00-08:00); start == end is an empty window."""
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def quiet_window_end(local: datetime, end: time, zone: zoneinfo.ZoneInfo) -> datetime:
    """The UTC instant a window that ``local`` (a wall time in ``zone``) is inside ends."""
    day = local.date() if local.time() < end else local.date() + timedelta(days=1)
    return _wall_to_utc(datetime.combine(day, end, tzinfo=zone))
