"""Process-wide metrics of the pipeline (Prometheus), served by the API and the worker."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PROVIDER_OUTCOMES = Counter(
    "fanout_provider_outcomes", "Per-device outcomes by provider", ["provider", "outcome"]
)
PROVIDER_CONFIG_ERRORS = Counter(
    "fanout_provider_config_errors",
    "Answers that mean fanout's own credentials or settings are wrong (needs a human)",
    ["provider"],
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
SQS_REQUESTS = Counter("fanout_sqs_requests", "SQS API calls by operation", ["operation"])
SQS_BILLED_REQUESTS = Counter(
    "fanout_sqs_billed_requests",
    "SQS API calls as SQS bills them: one per 64 KB of payload",
    ["operation"],
)
AUDIENCE_HELD_BACK = Counter(
    "fanout_audience_held_back",
    "Recipients the fan-out held back on purpose (opted_out, muted, capped, deferred, "
    "quiet_hours, and those a stopped shard did not read: cancelled, expired) and devices a "
    "batch held back (cancelled, expired), by reason",
    ["reason"],
)
PROVIDER_QUOTA_WAIT_SECONDS = Histogram(
    "fanout_provider_quota_wait_seconds",
    "Time a push waited for its credential's shared rate budget (a lease, or a 429 pause)",
    ["provider"],
)
