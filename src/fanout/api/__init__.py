"""The HTTP API: ``create_app(settings)`` builds the ASGI application.

``create_app`` is imported when first asked for, not with the package: a module that
only needs ``fanout.api.schemas`` (the bulk import checks devices by its models) does not
load the whole application. ``fanout import`` started ~1.9 s later with it (python -X
importtime, the loaded 2-core machine), a fifth of a 1,000,000-row import at 100,000 rows/s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fanout.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from fanout.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
