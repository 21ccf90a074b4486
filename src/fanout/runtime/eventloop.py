"""Which asyncio event loop the long-running processes and Lambda containers run on.

uvloop when it is installed (``auto``): a delivery worker spends most of its CPU in the
event loop and TLS (docs/performance.md, "Delivery"), and uvloop measured faster there.
``FANOUT_EVENT_LOOP=asyncio`` keeps the standard loop, e.g. to compare or to debug.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

from fanout.config import EventLoopChoice

T = TypeVar("T")


def uses_uvloop(choice: EventLoopChoice) -> bool:
    if choice == "auto":
        return importlib.util.find_spec("uvloop") is not None
    return choice == "uvloop"


def new_event_loop(choice: EventLoopChoice) -> asyncio.AbstractEventLoop:
    if uses_uvloop(choice):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice) -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(choice)) as runner:
        return runner.run(main)
