"""The schedule arithmetic of paced sends (stages/pacing.py)."""

from datetime import UTC, datetime, timedelta

from fanout.stages import pacing

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_a_batch_is_a_seconds_worth_of_the_rate_at_least_one_at_most_the_ceiling() -> None:
    assert pacing.batch_devices(20_000, 500) == 333
    assert pacing.batch_devices(1_200, 500) == 20
    assert pacing.batch_devices(30, 500) == 1  # less than one a second: one per batch
    assert pacing.batch_devices(1, 500) == 1
    assert pacing.batch_devices(10_000_000, 500) == 500


def test_each_batch_goes_after_the_devices_before_it_at_the_rate() -> None:
    times = pacing.schedule(T0, [20, 20, 10, 20], 1_200)  # 20 a second
    assert times == [
        T0,
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=2),
        T0 + timedelta(seconds=2.5),
    ]
    assert pacing.schedule(T0, [], 1_200) == []


def test_a_minutes_worth_of_devices_fills_exactly_one_minute() -> None:
    sizes = [333] * 60 + [20]  # 20,000 devices at 20,000 a minute
    times = pacing.schedule(T0, sizes, 20_000)
    in_first_minute = sum(
        s for s, t in zip(sizes, times, strict=True) if t < T0 + timedelta(minutes=1)
    )
    assert in_first_minute == 20_000
    assert T0 + pacing.duration(sum(sizes), 20_000) == T0 + timedelta(minutes=1)


def test_an_idle_clock_starts_now_and_a_busy_one_where_it_ends() -> None:
    assert pacing.slot_start(None, T0) == T0
    assert pacing.slot_start(T0 - timedelta(hours=1), T0) == T0  # no burst banked
    assert pacing.slot_start(T0 + timedelta(minutes=3), T0) == T0 + timedelta(minutes=3)


def test_a_shard_parks_once_the_read_ahead_is_scheduled_and_reads_on_before_it_runs_out() -> None:
    ahead = timedelta(minutes=5)
    assert not pacing.far_enough_ahead(None, T0, ahead)
    assert not pacing.far_enough_ahead(T0 + timedelta(minutes=4), T0, ahead)
    assert pacing.far_enough_ahead(T0 + timedelta(minutes=5), T0, ahead)
    assert pacing.resume_at(T0 + timedelta(minutes=7), ahead) == T0 + timedelta(minutes=2)
