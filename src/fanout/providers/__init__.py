"""Push providers behind one interface (``Provider``), one module per provider."""

from __future__ import annotations

from fanout.config import Settings
from fanout.providers.base import DELIVERED, Outcome, OutcomeKind, Provider


def build_providers(settings: Settings) -> dict[str, Provider]:
    """Providers by platform, as configured. The sink stands in for all platforms."""
    from fanout.providers.sink import SinkProvider

    sink = SinkProvider(settings.sink_url)
    return {platform: sink for platform in sink.platforms}


__all__ = ["DELIVERED", "Outcome", "OutcomeKind", "Provider", "build_providers"]
