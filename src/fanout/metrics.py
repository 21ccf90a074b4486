"""Every metric fanout keeps, defined once (Prometheus), for every runtime.

The long-running worker serves them on ``/metrics`` (``FANOUT_METRICS_PORT``), the API
serves them with its own, and the Lambda handlers publish the same series to CloudWatch
as Embedded Metric Format (``runtime/emf.py`` derives that from this registry: the names
a dashboard uses are the same in Grafana and CloudWatch). Labels are bounded sets
(providers, outcomes, queue roles, a reason's first words, app keys: as many as apps,
or none with FANOUT_METRICS_APP_LABEL=false), never a token or an id.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from fanout.providers.base import Outcome
    from fanout.store.events import OpenEvents

# Whether series carry the ``app`` label (FANOUT_METRICS_APP_LABEL): set once by each
# runtime from its settings (``use_app_label``); the providers take it when built.
_app_label = True


def use_app_label(on: bool) -> None:
    """Label per-app series with the app's key (True, the default) or leave it empty."""
    global _app_label
    _app_label = on


def app_label(app: str | None) -> str:
    """The ``app`` label of a series of the app ``app`` (its key): empty when the setting
    drops it, or for no app."""
    return (app or "") if _app_label else ""


# --- Providers ------------------------------------------------------------------------
PROVIDER_OUTCOMES = Counter(
    "fanout_provider_outcomes",
    "Per-device outcomes by provider, app (its key; empty with FANOUT_METRICS_APP_LABEL="
    "false, or for the sink), outcome (ok, invalid_token, retry, permanent, held) and "
    "reason (the first words of the service's answer; empty for ok)",
    ["provider", "app", "outcome", "reason"],
)
PROVIDER_CONFIG_ERRORS = Counter(
    "fanout_provider_config_errors",
    "Answers that mean fanout's own credentials or settings are wrong (needs a human), by "
    "provider and app (its key; empty with FANOUT_METRICS_APP_LABEL=false)",
    ["provider", "app"],
)
# From the event's commit (publish) to the push service accepting the device's push: the
# figure a user feels. Buckets from 50 ms (a small event, an idle pipeline) to an hour (a
# push retried, or held by an open breaker, for that long).
PROVIDER_ACCEPT_LATENCY = Histogram(
    "fanout_provider_accept_latency_seconds",
    "Seconds from an event's publish to a push service accepting one device's push, by "
    "provider and app (its key; empty with FANOUT_METRICS_APP_LABEL=false, or the sink)",
    ["provider", "app"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
PROVIDER_QUOTA_WAIT_SECONDS = Histogram(
    "fanout_provider_quota_wait_seconds",
    "Seconds a push waited for its provider credential's shared quota, by provider and app "
    "(its key; empty with FANOUT_METRICS_APP_LABEL=false)",
    ["provider", "app"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PROVIDER_BREAKER_STATE = Gauge(
    "fanout_provider_breaker_state",
    "A provider credential's config-error breaker: 0 closed, 1 open (devices held back), "
    "2 half-open (one probe request decides)",
    ["provider", "credential"],
)
PROVIDER_BREAKER_OPENS = Counter(
    "fanout_provider_breaker_opens",
    "Times a provider credential's breaker opened on a config error",
    ["provider", "credential"],
)
PROVIDER_GOAWAYS = Counter(
    "fanout_provider_goaways",
    "GOAWAY frames from push services, one per connection, by provider and error code",
    ["provider", "code"],
)
PROVIDER_DEAD_CONNECTIONS = Counter(
    "fanout_provider_dead_connections",
    "Connections to push services given up because a PING went unanswered",
    ["provider"],
)

# --- Events ---------------------------------------------------------------------------
EVENTS_FINISHED = Counter(
    "fanout_events_finished",
    "Events that ended, by terminal status (delivered, partially_delivered, failed, ...) "
    "and app (its key; empty with FANOUT_METRICS_APP_LABEL=false)",
    ["status", "app"],
)

# Read from PostgreSQL at each scrape of the API's /metrics (whichever process ends an
# event, the database knows them all): unfinished events by state, the oldest one's age.
EVENTS_OPEN = "fanout_events_open"
EVENTS_OLDEST_OPEN_AGE = "fanout_events_oldest_open_age_seconds"


def open_event_gauges(rows: Sequence[OpenEvents]) -> list[GaugeMetricFamily]:
    """The ``fanout_events_open`` and ``..._oldest_open_age_seconds`` families of ``rows``."""
    events = GaugeMetricFamily(EVENTS_OPEN, "Unfinished events by state", labels=["status"])
    oldest = GaugeMetricFamily(
        EVENTS_OLDEST_OPEN_AGE,
        "Seconds since the oldest unfinished event in each state was published",
        labels=["status"],
    )
    from fanout.store.lifecycle import OPEN_STATES  # not at the top: lifecycle imports this

    for state in OPEN_STATES:
        row = next((r for r in rows if r.status == state), None)
        events.add_metric([state.value], row.events if row else 0)
        oldest.add_metric([state.value], row.oldest_seconds if row else 0)
    return [events, oldest]


# --- SQS ------------------------------------------------------------------------------
# --- Webhooks (issue #24) ---------------------------------------------------------------
WEBHOOK_CALLS = Counter(
    "fanout_webhook_calls",
    "Webhook calls by result: delivered (2xx), retry (failed, due again), failed (its "
    "retry window is over, kept for a replay), refused (the address is not public)",
    ["result"],
)

SQS_REQUESTS = Counter("fanout_sqs_requests", "SQS API calls by operation", ["operation"])
SQS_BILLED_REQUESTS = Counter(
    "fanout_sqs_billed_requests",
    "SQS API calls as SQS bills them: one per 64 KB of payload",
    ["operation"],
)
AUDIENCE_HELD_BACK = Counter(
    "fanout_audience_held_back",
    "Recipients the fan-out held back on purpose (filtered, opted_out, muted, capped, deferred, "
    "quiet_hours, and those a stopped shard did not read: cancelled, expired) and devices a "
    "batch held back (cancelled, expired, superseded), by reason and app (its key; empty with "
    "FANOUT_METRICS_APP_LABEL=false)",
    ["reason", "app"],
)
SQS_MESSAGES = Gauge(
    "fanout_sqs_messages",
    "Messages in a queue (fanout, delivery, fanout_dlq, delivery_dlq) by state (visible, "
    "in_flight, delayed), as SQS approximates them; read by each worker's reconciler loop",
    ["queue", "state"],
)
SQS_OLDEST_MESSAGE_AGE = Gauge(
    "fanout_sqs_oldest_message_age_seconds",
    "Age of a queue's oldest message, where the SQS endpoint reports it (AWS reports it only "
    "to CloudWatch, as AWS/SQS ApproximateAgeOfOldestMessage)",
    ["queue"],
)

# --- Leases ---------------------------------------------------------------------------
LEASES_LOST = Counter(
    "fanout_leases_lost",
    "Shards and batches an invocation stopped working on because its lease had lapsed and "
    "another invocation held it (a checkpoint, renewal or finish in its name was refused), "
    "by unit (shard, batch)",
    ["unit"],
)

# --- Reconciler -----------------------------------------------------------------------
RECONCILER_ACTIONS = Counter(
    "fanout_reconciler_actions",
    "What the reconciler did, by kind: event_resent, event_finished, shard_resent, "
    "batch_resent, given_up",
    ["kind"],
)

# The publish time (epoch seconds) of the event whose pushes are being sent, set by the
# delivery stage around each provider call: a provider observes the accept latency at the
# moment each push is accepted without every Provider.send carrying it as an argument.
published_at: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "fanout_published_at", default=None
)

_REASON_PREFIX = re.compile(r"^[a-z_]+( config)?: ")


def reason_label(reason: str | None) -> str:
    """A bounded label for an outcome's reason: its provider prefix off, the text before
    any detail (``fcm: 400 INVALID_ARGUMENT: <message>`` -> ``400 INVALID_ARGUMENT``),
    at most three words."""
    if not reason:
        return ""
    text = _REASON_PREFIX.sub("", reason).split(":", 1)[0]
    return " ".join(text.split()[:3])[:60]


# The labelled children by their labels: ``labels()`` takes a lock and builds a key on
# every call, and this runs once per device (~13,000 a second per delivery worker).
# The app is one more part of the same key: the per-push cost is the same dict look-up.
_OUTCOME_CHILDREN: dict[tuple[str, str, str, str | None], Any] = {}
_LATENCY_CHILDREN: dict[tuple[str, str], Any] = {}


def count_outcome(provider: str, outcome: Outcome, app: str = "") -> None:
    """One device's outcome, and for an accepted push the latency since its publish.
    ``app``: the app's key, or empty (the sink; FANOUT_METRICS_APP_LABEL=false)."""
    key = (provider, app, outcome.kind.value, outcome.reason)
    child = _OUTCOME_CHILDREN.get(key)
    if child is None:
        child = PROVIDER_OUTCOMES.labels(provider, app, key[2], reason_label(outcome.reason))
        # Reasons with details in them, or many apps' series: kept up to a bound, then
        # looked up per push (~1.5 µs) rather than growing for ever.
        if len(_OUTCOME_CHILDREN) < 50_000:
            _OUTCOME_CHILDREN[key] = child
    child.inc()
    if key[2] == "ok" and (published := published_at.get()) is not None:
        latency = _LATENCY_CHILDREN.get((provider, app))
        if latency is None:  # as many as providers times apps: bounded by the apps
            latency = PROVIDER_ACCEPT_LATENCY.labels(provider, app)
            _LATENCY_CHILDREN[provider, app] = latency
        latency.observe(max(0.0, time.time() - published))


def count_outcomes(provider: str, outcomes: Sequence[Outcome]) -> None:
    """Many devices' outcomes at once (a provider that answers per request of many)."""
    by_kind: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        key = (outcome.kind.value, reason_label(outcome.reason))
        by_kind[key] = by_kind.get(key, 0) + 1
    for (kind, reason), count in by_kind.items():
        PROVIDER_OUTCOMES.labels(provider, "", kind, reason).inc(count)
    accepted = by_kind.get(("ok", ""), 0)
    published = published_at.get()
    if accepted and published is not None:
        latency = PROVIDER_ACCEPT_LATENCY.labels(provider, "")
        seconds = max(0.0, time.time() - published)
        for _ in range(accepted):
            latency.observe(seconds)
