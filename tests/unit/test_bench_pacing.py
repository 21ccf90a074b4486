"""What bench/pacing.py judges by: the sink's count of unique devices, sampled every
second, cut into windows from the first device received."""

from __future__ import annotations

from tests.unit.test_bench_apps import _load

pacing_bench = _load("pacing")


def test_samples_are_cut_into_windows_from_the_first_device_received() -> None:
    samples = [(0.0, 0), (1.0, 0), (2.0, 10), (3.0, 20), (4.0, 30), (5.0, 45), (6.0, 50)]
    # From t=2: [2, 4) has 10 (at 2) and 10 (at 3); [4, 6) 10 and 15; [6, 8) 5.
    assert pacing_bench.windows(samples, 2.0) == [20, 25, 5]
    assert sum(pacing_bench.windows(samples, 2.0)) == 50


def test_nothing_received_is_no_window() -> None:
    assert pacing_bench.windows([(0.0, 0), (1.0, 0)], 60.0) == []
