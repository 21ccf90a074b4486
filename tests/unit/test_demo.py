"""The demo's summary: what its two durations measure, and the labels that say so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Console

from fanout.local.demo import DemoSummary, summary_table, timings
from fanout.stages.progress import EventStatus

PUBLISHED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def status(fanned_out: float | None, finished: float | None) -> EventStatus:
    def after(seconds: float | None) -> datetime | None:
        return None if seconds is None else PUBLISHED + timedelta(seconds=seconds)

    return EventStatus.model_construct(
        started_at=PUBLISHED, fanned_out_at=after(fanned_out), finished_at=after(finished)
    )


def test_both_durations_run_from_publication_by_the_events_own_clock() -> None:
    # The demo waited 9 s in all (its polls, its start): not what the event took.
    assert timings(status(0.4, 1.5), waited=9.0) == (0.4, 1.5)


def test_a_stage_not_ended_counts_the_demos_whole_wait() -> None:
    assert timings(status(0.4, None), waited=600.0) == (0.4, 600.0)
    assert timings(status(None, None), waited=600.0) == (600.0, 600.0)


def test_the_table_says_what_each_duration_measures_fan_out_first() -> None:
    summary = DemoSummary(
        subscribers=10, devices=10, held_back={}, expected=10, delivered=10, failed=0,
        invalid=0, skipped=0, duplicates=0, shards=1, fanout_seconds=0.4, seconds=1.5,
        notifications_per_second=6.7, database="embedded PostgreSQL", sqs="moto",
    )  # fmt: skip
    console = Console(record=True, width=100)
    console.print(summary_table(summary))
    rows = [line.strip("│ ").split("│") for line in console.export_text().splitlines()]
    labels = {row[0].strip(): row[1].strip() for row in rows if len(row) == 2}
    assert labels["seconds to fan out"] == "0.4"
    assert labels["seconds to the last push"] == "1.5"
    assert list(labels).index("seconds to fan out") < list(labels).index("seconds to the last push")
