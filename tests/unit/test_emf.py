"""The EMF side of the metrics: derived from a Prometheus registry, deltas per flush."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fanout.runtime.emf import EmfPublisher, documents


def test_counters_and_histograms_publish_deltas_gauges_their_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = CollectorRegistry()
    outcomes = Counter("fanout_x_outcomes", "x", ["outcome"], registry=registry)
    latency = Histogram("fanout_x_seconds", "x", ["provider"], registry=registry)
    depth = Gauge("fanout_x_messages", "x", ["queue"], registry=registry)
    Counter("other_requests", "not fanout's", registry=registry).inc()
    publisher = EmfPublisher("ns", registry)

    outcomes.labels("ok").inc(3)
    latency.labels("apns").observe(0.5)
    depth.labels("delivery_dlq").set(2)
    publisher.flush()
    first = documents(capsys.readouterr().out)
    values = {k: v for d in first for k, v in d.items() if k.startswith("fanout_")}
    assert values == {
        "fanout_x_outcomes_total": [3.0],
        "fanout_x_seconds_count": [1.0],
        "fanout_x_seconds_sum": [0.5],
        "fanout_x_messages": [2.0],
    }
    [latency_doc] = [d for d in first if "fanout_x_seconds_sum" in d]
    assert latency_doc["provider"] == "apns"
    units = {m["Name"]: m["Unit"] for m in latency_doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {"fanout_x_seconds_count": "Count", "fanout_x_seconds_sum": "Seconds"}

    outcomes.labels("ok").inc(2)
    publisher.flush()
    second = documents(capsys.readouterr().out)
    values = {k: v for d in second for k, v in d.items() if k.startswith("fanout_")}
    assert values == {"fanout_x_outcomes_total": [2.0], "fanout_x_messages": [2.0]}


def test_an_empty_label_is_a_dimension_cloudwatch_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = CollectorRegistry()
    Counter("fanout_y", "y", ["reason"], registry=registry).labels("").inc()
    EmfPublisher("ns", registry).flush()
    [document] = documents(capsys.readouterr().out)
    assert document["reason"] == "none"
