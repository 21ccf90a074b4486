"""What bench/chaos.py --apps and bench/apps.py judge by: several events read as one, and
each app's event counted exactly once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fanout.local.faults import EventSnapshot

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


chaos, apps = _load("chaos"), _load("apps")


def snapshot(status: str, *, shards: int = 2, done: int = 0, batches: int = 0) -> EventSnapshot:
    return EventSnapshot(status, shards, done, batches, batches, 0, 0)


def test_events_are_mid_fan_out_while_any_is_and_fanned_out_or_terminal_once_all_are() -> None:
    fanning = snapshot("fanning_out", done=1, batches=3)
    delivered = snapshot("delivered", done=2, batches=4)
    both = chaos.AllEvents((fanning, delivered))
    assert both.mid_fan_out and not both.fanned_out and not both.terminal
    assert both.status == "fanning_out/delivered"
    assert (both.shards, both.shards_done, both.batches_sent) == (4, 3, 7)
    ended = chaos.AllEvents((delivered, delivered))
    assert ended.fanned_out and ended.terminal and not ended.mid_fan_out
    assert ended.status == "delivered"


def test_an_app_counts_as_exactly_once_only_with_every_device_once_and_no_duplicate() -> None:
    counts = {1: (10, 0), 2: (9, 0), 3: (10, 2)}  # event -> (devices pushed, duplicates)
    assert apps.exactly_once(counts, [1, 2, 3, 4], expected=10) == {
        "apps_exactly_once": 1,
        "missed": 1 + 10,  # event 2 missed one device, event 4 was never pushed
        "duplicates": 2,
    }
