"""The garbage collector of a long-running process (the worker, a Lambda container).

Once started, such a process holds a large heap that lives as long as it does (modules,
classes, pydantic models, the pipeline), and the delivery stage makes short-lived objects
by the thousand per batch (requests, outcomes, frames), few of them in reference cycles.
With CPython's defaults (a collection every 700 allocations, every tenth of those also
going through the older generations) the collector ran tens of times per batch and walked
the start-up heap again and again.

``settle()`` moves everything alive at start-up out of the collector's sight
(``gc.freeze``: never walked again, never freed: it lives for the process anyway) and
collects the youngest generation every 20,000 allocations instead of 700. In an earlier
experiment (issue #22) this alone cut the delivery worker's CPU per push by 35-40 %; with
it (and a batch's locale groups sharing one set of senders) bench/apps.py measured the
delivery worker's CPU per push 69 -> 58 us for one app's 100,000 devices and 94 -> 83 us
for 100 apps' (one pair, back to back, 2 cores, docs/performance.md). Memory stays flat
(RSS with 1,000 apps 1.14x of one app's, as before): cyclic garbage waits for at most
20,000 allocations more, and what reference counting frees (nearly everything) is freed
at once as before.
"""

from __future__ import annotations

import gc

# Allocations (less deallocations) between two collections of the youngest generation.
GEN0_THRESHOLD = 20_000


def settle() -> None:
    """Collect once, freeze what is left (the start-up heap) and space collections out.
    Call once start-up is done; calling it again freezes what has been made since."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
