"""deploy/grafana-dashboard.json is importable and reads only series fanout serves."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from prometheus_client import REGISTRY

import fanout.metrics
from fanout.api.state import Metrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json"


def served_names() -> set[str]:
    """Every sample name the worker and the API can serve."""
    families = [*REGISTRY.collect(), *Metrics().registry.collect()]
    names = set()
    for family in families:
        base = family.name
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {base + s for s in suffixes.get(family.type, [""])}
    return names | {fanout.metrics.EVENTS_OPEN, fanout.metrics.EVENTS_OLDEST_OPEN_AGE}


def test_the_dashboard_reads_only_series_fanout_serves() -> None:
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    assert dashboard["uid"] and dashboard["__inputs"][0]["pluginId"] == "prometheus"
    used = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\bfanout_[a-z_]+", target["expr"]))
    assert used, "no fanout series in the dashboard"
    assert used <= served_names(), used - served_names()
    # The series the issue asks a dashboard for.
    for name in (
        "fanout_provider_accept_latency_seconds_bucket",
        "fanout_provider_outcomes_total",
        "fanout_sqs_messages",
        "fanout_sqs_oldest_message_age_seconds",
        "fanout_reconciler_actions_total",
        "fanout_provider_quota_wait_seconds_bucket",
        "fanout_provider_breaker_state",
    ):
        assert name in used
