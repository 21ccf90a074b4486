"""fanout's metrics as CloudWatch Embedded Metric Format, for the Lambda handlers.

Nothing here names a metric: what is published is whatever ``fanout.metrics`` holds, read
from the process's Prometheus registry, so CloudWatch and Prometheus see one set of names
(the Prometheus sample names: ``fanout_provider_outcomes_total``,
``fanout_provider_accept_latency_seconds_sum`` and ``_count``, ``fanout_sqs_messages``).
At the end of each invocation the counters and histograms publish what they gained since
the last flush (a container lives for many invocations; CloudWatch sums the deltas; a
series is published at 0 the first time, so that an alarm on it has data), and the
gauges their current value. Labels become dimensions, one EMF document per set of
them (powertools' ``EphemeralMetrics``, printed to stdout, where Lambda's log agent takes
it). Histogram buckets are not published: CloudWatch gets each histogram's sum and count
(the mean); percentiles come from Prometheus' buckets, or from CloudWatch Logs Insights.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from prometheus_client import REGISTRY, CollectorRegistry

_CUMULATIVE = ("counter", "histogram")  # published as deltas
_SKIPPED_SUFFIXES = ("_created", "_bucket")
EMPTY_DIMENSION = "none"  # CloudWatch refuses an empty dimension value (an ok's reason)

Dimensions = tuple[tuple[str, str], ...]


class EmfPublisher:
    """Publishes the ``fanout_*`` metrics of ``registry`` as EMF, as deltas per flush."""

    def __init__(self, namespace: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.namespace = namespace
        self.registry = registry
        self._published: dict[tuple[str, Dimensions], float] = {}

    def flush(self) -> int:
        """Print one EMF document per dimension set that changed; returns how many."""
        groups = self._changes()
        for dimensions, values in groups.items():
            document = EphemeralMetrics(namespace=self.namespace)
            for label, label_value in dimensions:
                document.add_dimension(label, label_value or EMPTY_DIMENSION)
            for name, unit, value in values:
                document.add_metric(name=name, unit=unit, value=value)
            document.flush_metrics()
        return len(groups)

    def _changes(self) -> dict[Dimensions, list[tuple[str, MetricUnit, float]]]:
        groups: dict[Dimensions, list[tuple[str, MetricUnit, float]]] = defaultdict(list)
        for family in self.registry.collect():
            if not family.name.startswith("fanout_"):
                continue
            for sample in family.samples:
                if sample.name.endswith(_SKIPPED_SUFFIXES):
                    continue
                dimensions: Dimensions = tuple(sorted(sample.labels.items()))
                value = float(sample.value)
                if family.type in _CUMULATIVE:
                    key = (sample.name, dimensions)
                    before = self._published.get(key)
                    self._published[key] = value
                    value -= before or 0.0
                    if value <= 0 and before is not None:
                        continue  # unchanged (a series new to this container goes out at 0)
                groups[dimensions].append((sample.name, _unit(sample.name), value))
        return groups


def _unit(name: str) -> MetricUnit:
    seconds = name.endswith(("_seconds", "_seconds_sum"))
    return MetricUnit.Seconds if seconds else MetricUnit.Count


def documents(output: str) -> list[dict[str, Any]]:
    """The EMF documents among printed lines (for tests and tools reading a log)."""
    import orjson

    found = []
    for line in output.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            found.append(orjson.loads(line))
    return found
