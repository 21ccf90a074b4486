"""The worker's and a Lambda container's garbage collector, once started (runtime/heap.py)."""

from __future__ import annotations

import subprocess
import sys

SETTLED = """
import gc
from fanout.runtime import heap
before = gc.get_freeze_count()
heap.settle()
print(before, gc.get_freeze_count() > 0, gc.get_threshold()[0])
"""


def test_settling_freezes_the_start_up_heap_and_spaces_collections_out() -> None:
    # A process of its own: the test process's collector stays as it is.
    out = subprocess.run(
        [sys.executable, "-c", SETTLED], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0", "True", "20000"]
