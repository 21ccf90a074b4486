"""Local-time waves and quiet windows, as pure functions: the daylight-saving nights of
Europe/Berlin and America/New_York, windows crossing midnight, zones grouped by instant."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from fanout.stages.publish import InvalidPublishOption, PublishOptions, request_fingerprint
from fanout.stages.schedule import (
    in_quiet_window,
    next_local_instant,
    parse_local_time,
    plan_waves,
    quiet_window_end,
)

NINE = time(9, 0)
BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("zone", "evening_before", "expected_utc"),
    [
        # Berlin springs forward at 01:00 UTC on 29 March: 09:00 is CEST (+2).
        (BERLIN, datetime(2026, 3, 28, 22, 0, tzinfo=UTC), datetime(2026, 3, 29, 7, 0, tzinfo=UTC)),
        # ... and falls back at 01:00 UTC on 25 October: 09:00 is CET (+1).
        (
            BERLIN,
            datetime(2026, 10, 24, 22, 0, tzinfo=UTC),
            datetime(2026, 10, 25, 8, 0, tzinfo=UTC),
        ),
        # New York springs forward at 07:00 UTC on 8 March: 09:00 is EDT (-4).
        (NEW_YORK, datetime(2026, 3, 8, 4, 0, tzinfo=UTC), datetime(2026, 3, 8, 13, 0, tzinfo=UTC)),
        # ... and falls back at 06:00 UTC on 1 November: 09:00 is EST (-5).
        (
            NEW_YORK,
            datetime(2026, 11, 1, 3, 0, tzinfo=UTC),
            datetime(2026, 11, 1, 14, 0, tzinfo=UTC),
        ),
    ],
    ids=["berlin-spring", "berlin-autumn", "new-york-spring", "new-york-autumn"],
)
def test_nine_local_on_the_night_the_clocks_change_is_the_right_utc_instant(
    zone: ZoneInfo, evening_before: datetime, expected_utc: datetime
) -> None:
    instant = next_local_instant(zone, NINE, evening_before)
    assert instant == expected_utc
    assert instant.astimezone(zone).time() == NINE


def test_a_local_time_already_past_today_is_tomorrows() -> None:
    after = datetime(2026, 3, 29, 8, 0, tzinfo=UTC)  # 10:00 in Berlin
    assert next_local_instant(BERLIN, NINE, after) == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)


def test_a_wall_time_skipped_or_repeated_is_read_with_the_offset_before_the_change() -> None:
    # 02:30 does not exist in Berlin on the spring night: read at +01:00 (PostgreSQL does
    # the same), it is 01:30 UTC, i.e. 03:30 CEST.
    spring = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    assert next_local_instant(BERLIN, time(2, 30), spring) == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )
    # 02:30 happens twice on the autumn night: the first time, still at +02:00.
    autumn = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)
    assert next_local_instant(BERLIN, time(2, 30), autumn) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )


def test_zones_sharing_an_instant_are_one_wave_and_the_default_zone_is_the_catch_all() -> None:
    after = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    waves = plan_waves(
        ["Europe/Berlin", "Europe/Paris", "America/New_York", "Not/AZone"],
        NINE,
        default_zone="UTC",
        after=after,
    )
    assert [(w.release_at.hour, w.zones, w.catch_all) for w in waves] == [
        (7, ("Europe/Berlin", "Europe/Paris"), False),
        (9, ("UTC",), True),  # unknown zones go with the default zone's wave
        (13, ("America/New_York",), False),
    ]


@pytest.mark.parametrize(
    ("local", "inside"),
    [
        (time(21, 59), False),
        (time(22, 0), True),
        (time(23, 59), True),
        (time(0, 0), True),
        (time(7, 59), True),
        (time(8, 0), False),
        (time(12, 0), False),
    ],
)
def test_a_window_crossing_midnight(local: time, inside: bool) -> None:
    assert in_quiet_window(local, time(22, 0), time(8, 0)) is inside


def test_a_window_within_a_day_and_an_empty_window() -> None:
    assert in_quiet_window(time(13, 30), time(13, 0), time(14, 0))
    assert not in_quiet_window(time(14, 0), time(13, 0), time(14, 0))
    assert not in_quiet_window(time(13, 0), time(13, 0), time(13, 0))


def test_a_window_ends_at_its_next_end_on_the_local_clock() -> None:
    late = datetime(2026, 3, 28, 23, 30)  # Berlin wall time, before the change
    early = datetime(2026, 3, 29, 1, 30)  # after midnight, before the gap
    # 08:00 on 29 March is CEST: 06:00 UTC, for both.
    assert quiet_window_end(late, time(8, 0), BERLIN) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    assert quiet_window_end(early, time(8, 0), BERLIN) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["9:00", "24:00", "09:60", "09:00:00", "nine"])
def test_a_local_time_must_be_hh_mm(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_local_time(text)


def test_options_that_contradict_name_the_field() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    with pytest.raises(InvalidPublishOption) as past:
        PublishOptions(expires_at=datetime(2026, 11, 27, 11, 0, tzinfo=UTC)).check(now)
    assert past.value.field == "expires_at"
    with pytest.raises(InvalidPublishOption) as before_send:
        PublishOptions(
            send_at=datetime(2026, 11, 28, tzinfo=UTC),
            expires_at=datetime(2026, 11, 27, 13, tzinfo=UTC),
        ).check(now)
    assert before_send.value.field == "expires_at"


def test_options_are_part_of_what_an_idempotency_key_binds() -> None:
    payload = {"title": "x"}
    plain = request_fingerprint(payload, topic="t", user=None)
    assert plain == request_fingerprint(payload, topic="t", user=None, options=PublishOptions())
    later = PublishOptions(send_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert request_fingerprint(payload, topic="t", user=None, options=later) != plain
    # The same instant written in another offset is the same request.
    same = PublishOptions(send_at=datetime(2030, 1, 1, 1, tzinfo=ZoneInfo("Europe/Berlin")))
    assert request_fingerprint(payload, topic="t", user=None, options=same) == request_fingerprint(
        payload, topic="t", user=None, options=later
    )
