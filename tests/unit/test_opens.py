"""What stages/opens.py decides without the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fanout.stages.opens import _storable


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), datetime(2000, 1, 1, tzinfo=UTC)),
        (
            datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-14))),
            datetime(9000, 1, 1, tzinfo=UTC),
        ),
        (
            datetime(2026, 12, 7, 12, tzinfo=timezone(timedelta(hours=1))),
            datetime(2026, 12, 7, 11, tzinfo=UTC),
        ),
    ],
)
def test_a_devices_open_time_is_kept_storable(given: datetime, kept: datetime) -> None:
    """PostgreSQL refuses year 0 (year 1 at +14:00 in UTC): such a time is clamped first."""
    assert _storable(given) == kept
