"""Process-wide metrics of the pipeline (Prometheus), served by the API and the worker."""

from __future__ import annotations

from prometheus_client import Counter

PROVIDER_OUTCOMES = Counter(
    "fanout_provider_outcomes", "Per-device outcomes by provider", ["provider", "outcome"]
)
PROVIDER_CONFIG_ERRORS = Counter(
    "fanout_provider_config_errors",
    "Answers that mean fanout's own credentials or settings are wrong (needs a human)",
    ["provider"],
)
