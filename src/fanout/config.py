"""Settings: read from the environment (prefix ``FANOUT_``) once, then passed down.

No other module reads ``os.environ``; everything that can be configured is a field here.
"""

from __future__ import annotations

import errno
import os
import socket
import zoneinfo
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, urlsplit

import orjson
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fanout.errors import FanoutError
from fanout.retry import Backoff

if TYPE_CHECKING:
    from fanout.open_tokens import OpenTokens

# runtime/eventloop.py: uvloop when installed, or the one named.
EventLoopChoice = Literal["auto", "asyncio", "uvloop"]

_PG_SCHEMES = {"postgresql", "postgres"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}

DATABASE_URL_UNSET = (
    "FANOUT_DATABASE_URL is not set: point it at your PostgreSQL "
    "(postgresql://user@host/db), or run 'fanout demo' which needs none"
)


class ConfigError(FanoutError):
    """A setting is missing or holds a value fanout cannot use: nothing was tried.

    The message names the ``FANOUT_*`` variable and never repeats its value, which may
    be a secret.
    """


class Unreachable(FanoutError):
    """A service a setting points at did not answer, or refused fanout.

    The message says which service, where (host and port, never credentials) and the
    setting that points there: ``could not reach the database at db:5432
    (FANOUT_DATABASE_URL): connection refused``.
    """

    def __init__(
        self, service: str, where: str, setting: str, reason: str, *, refused: bool = False
    ) -> None:
        what = (
            f"{service} at {where} refused fanout"
            if refused
            else f"could not reach {service} at {where}"
        )
        super().__init__(f"{what} ({setting}): {reason}")
        self.service = service
        self.where = where
        self.setting = setting


_CONNECTION_ERRORS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}


def connection_failure(exc: BaseException) -> str:
    """Why a connection failed, in a few words: from the OS error behind ``exc`` if there
    is one (the drivers wrap it), else the innermost exception's own words."""
    chain = [exc]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) and len(chain) < 10:
        chain.append(cause)
    for failure in chain:
        if isinstance(failure, socket.gaierror):
            return "unknown host"
        if isinstance(failure, TimeoutError):
            return "timed out"
        if phrase := _CONNECTION_ERRORS.get(getattr(failure, "errno", None) or 0):
            return phrase
    return str(chain[-1]) or type(chain[-1]).__name__


class Settings(BaseSettings):
    """Everything fanout can be told, with defaults that work on one machine."""

    # Never echo a setting's value in a validation error: it may be a key (FANOUT_SECRET_KEY)
    # and such an error can reach a log (a Lambda container's start-up traceback).
    model_config = SettingsConfigDict(
        env_prefix="FANOUT_", extra="ignore", hide_input_in_errors=True
    )

    # --- PostgreSQL -------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql:// URL. Unset: `fanout demo` starts an embedded PostgreSQL.",
    )
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_pooler: Literal["none", "pgbouncer", "rds_proxy"] = Field(
        default="none",
        description="What FANOUT_DATABASE_URL points at: PostgreSQL itself, or PgBouncer "
        "(transaction pooling) or RDS Proxy in front of it; a pooler turns asyncpg's "
        "statement cache off.",
    )
    database_direct_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL itself, for migrations (they hold a session's advisory "
        "lock, which a pooler cannot keep); unset: FANOUT_DATABASE_URL.",
    )
    database_read_url: SecretStr | None = Field(
        default=None,
        description="A read replica for the fan-out's page queries; every write stays on "
        "FANOUT_DATABASE_URL. Unset: the fan-out reads from FANOUT_DATABASE_URL too.",
    )

    @field_validator("database_url", "database_direct_url", "database_read_url")
    @classmethod
    def _postgresql_url(cls, url: SecretStr | None) -> SecretStr | None:
        # asyncpg would say this too, but only once a command tries to connect.
        if url is not None and urlsplit(url.get_secret_value()).scheme not in _PG_SCHEMES:
            raise ValueError("must be a postgresql:// URL")
        return url

    # --- SQS --------------------------------------------------------------------------
    sqs_endpoint_url: str | None = Field(
        default=None, description="SQS endpoint; unset means AWS's regional endpoint."
    )

    @field_validator("sqs_endpoint_url")
    @classmethod
    def _sqs_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL (http://127.0.0.1:5000)")
        return url

    aws_region: str = "us-east-1"
    queue_prefix: str = Field(
        default="fanout",
        pattern=r"^[A-Za-z0-9_-]{1,60}$",
        description="Queue names when no URL is given: <prefix>-fanout, <prefix>-delivery.",
    )
    fanout_queue_url: str | None = None
    delivery_queue_url: str | None = None
    max_receive_count: int = Field(
        default=5, ge=1, le=1000, description="Receives before a message goes to its DLQ."
    )
    visibility_timeout: int = Field(default=60, ge=5, le=43200)

    # --- Fan-out stage ------------------------------------------------------------------
    shard_size: int = Field(
        default=50_000,
        ge=1,
        description="Subscribers per fan-out shard; larger topics split into parallel shards.",
    )
    page_size: int = Field(default=5_000, ge=1, le=100_000, description="Subscribers per query.")
    batch_max_bytes: int = Field(
        # As large as SQS takes (capped at 90% of the queue's MaximumMessageSize, 1 MiB):
        # every message is a send, a receive and a delete, so fewer, fuller messages are
        # fewer requests, and SQS bills per 64 KB whatever the message size.
        default=1024 * 1024,
        ge=4 * 1024,
        description="Upper bound of one delivery batch message; capped by the queue's limit.",
    )

    delivery_backlog_limit: int | None = Field(
        default=None,
        ge=1,
        description="Fan-out pauses while the delivery queue holds more messages than this. "
        "Unset on SQS; set it for a self-hosted queue that keeps its backlog in memory.",
    )

    # --- Delivery stage -----------------------------------------------------------------
    delivery_max_attempts: int = Field(default=5, ge=1, le=50)
    retry_base_delay: int = Field(default=5, ge=0, le=900, description="Seconds; doubles.")
    provider: str = Field(
        default="push",
        pattern=r"^(push|sink)$",
        description="push: APNs/FCM/Web Push as configured; sink: everything to FANOUT_SINK_URL.",
    )
    sink_url: str = "http://127.0.0.1:8765"

    # --- Push providers (a provider left unconfigured is skipped with a warning) ---------
    apns_key_file: str | None = Field(default=None, description="The .p8 key from Apple.")
    apns_key: SecretStr | None = Field(default=None, description="The .p8 key's PEM text.")
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = Field(default=None, description="The app's bundle id.")
    apns_endpoint: str = "https://api.push.apple.com"
    # Where devices registered with "apns_environment": "sandbox" (debug builds) are sent.
    apns_sandbox_endpoint: str = "https://api.sandbox.push.apple.com"
    apns_allow_critical: bool = Field(
        default=False,
        description="Publishing critical alerts (interruption_level critical) for the apps "
        "without an allow_critical of their own: only once Apple has granted them the "
        "critical-alerts entitlement.",
    )
    fcm_credentials_file: str | None = Field(default=None, description="Service-account JSON.")
    fcm_credentials: SecretStr | None = Field(default=None, description="The JSON's text.")
    fcm_endpoint: str = "https://fcm.googleapis.com"
    vapid_private_key: SecretStr | None = Field(
        default=None, description="P-256 key: PEM, or the raw scalar in base64url."
    )
    vapid_subject: str | None = Field(default=None, pattern=r"^(mailto:|https://).+")
    tls_ca_file: str | None = Field(
        default=None, description="An extra trusted CA; the system trust store is always used."
    )
    provider_concurrency: int = Field(default=500, ge=1, description="Requests in flight.")
    provider_rate_limit: float = Field(default=20_000, gt=0, description="Requests/s each.")
    provider_request_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for a push service's answer, or for a connection to it "
        "while it is down; then retry.",
    )
    provider_connections: int = Field(
        default=2,
        ge=1,
        le=64,
        description="HTTP/2 connections per push service and worker; requests are spread "
        "across them, each kept under its server's MAX_CONCURRENT_STREAMS.",
    )
    # Apple asks for connections kept open rather than opened per push: 5 minutes keeps
    # an app pushing every few minutes on one connection, and a worker serving 1,000 apps
    # holds connections only for those pushing now.
    provider_idle_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Close a push service connection after this many seconds without a "
        "request (opened again on the next push); 0: never.",
    )
    # Shared by every worker and Lambda (providers/quota.py): 0 is no shared budget.
    fcm_quota_per_minute: int = Field(
        # FCM's default per project: firebase.google.com/docs/cloud-messaging/throttling-and-quotas
        default=600_000,
        ge=0,
        description="Messages a minute per FCM project, across all workers; 0: unlimited.",
    )
    apns_quota_per_minute: int = Field(
        default=0,
        ge=0,
        description="Requests a minute per APNs team and topic, across all workers; 0: "
        "unlimited (Apple publishes no rate).",
    )
    webpush_quota_per_minute: int = Field(
        default=0,
        ge=0,
        description="Requests a minute per VAPID key, across all workers; 0: unlimited "
        "(each browser's push service has its own, unpublished).",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="redis:// URL for the shared provider quotas; unset: they live in PostgreSQL.",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and urlsplit(url.get_secret_value()).scheme not in _REDIS_SCHEMES:
            raise ValueError("must be a redis:// or rediss:// URL")
        return url

    # --- Apps' credentials at rest (credentials/sealing.py) -------------------------------
    secret_key: SecretStr | None = Field(
        default=None,
        description="The key-encryption key the apps' stored credentials are sealed with: "
        "32 bytes in base64 (`fanout secrets generate-key`). On AWS it can come from the "
        "secret FANOUT_SECRETS_ARN names.",
    )

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, key: SecretStr | None) -> SecretStr | None:
        from fanout.credentials.sealing import decode_key

        if key is not None:
            decode_key(key.get_secret_value())  # its ValueError never holds the key
        return key

    previous_secret_keys: SecretStr | None = Field(
        default=None,
        description="Keys the stored credentials may still be sealed with, comma-separated "
        "(base64, 32 bytes each): opened with, never sealed with. For a rotation online: set "
        "the new key as FANOUT_SECRET_KEY and the old one here everywhere, run `fanout "
        "secrets rotate`, then drop it.",
    )

    @field_validator("previous_secret_keys")
    @classmethod
    def _previous_secret_keys(cls, keys: SecretStr | None) -> SecretStr | None:
        from fanout.credentials.sealing import decode_key

        if keys is not None:
            for key in keys.get_secret_value().split(","):
                decode_key(key.strip())  # its ValueError never holds the key
        return keys

    def previous_keys(self) -> list[str]:
        """FANOUT_PREVIOUS_SECRET_KEYS, one base64 key each."""
        if self.previous_secret_keys is None:
            return []
        return [k.strip() for k in self.previous_secret_keys.get_secret_value().split(",")]

    # --- Opens and clicks (open_tokens.py) ------------------------------------------------
    open_token_key: SecretStr | None = Field(
        default=None,
        description="The key every push's `fo_open` open token is signed with (at least 32 "
        "characters). Unset: derived from FANOUT_SECRET_KEY; neither set, opens are off "
        "(no `fo_open`, POST /v1/opens answers 404).",
    )

    @field_validator("open_token_key")
    @classmethod
    def _open_token_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value().strip()) < 32:
            raise ValueError("must be at least 32 characters")  # never echoes the key
        return key

    open_window_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="How long after an event is published its opens are counted; a token "
        "posted later (a replay) is accepted and ignored.",
    )
    opens_per_minute_per_address: int = Field(
        default=600,
        ge=1,
        description="POST /v1/opens: how many a client address may post a minute (then 429).",
    )

    def open_tokens(self) -> OpenTokens | None:
        """The open token minter and checker, or None when opens are off."""
        from fanout.credentials.sealing import decode_key
        from fanout.open_tokens import OpenTokens, derive_key

        if self.open_token_key is not None:
            return OpenTokens(self.open_token_key.get_secret_value().strip().encode())
        if self.secret_key is not None:
            return OpenTokens(derive_key(decode_key(self.secret_key.get_secret_value())))
        return None

    event_loop: EventLoopChoice = Field(
        default="auto",
        description="`fanout worker`'s event loop: uvloop when installed (auto), or "
        "asyncio / uvloop explicitly.",
    )
    provider_ping_seconds: float = Field(
        default=5.0,
        gt=0,
        description="The longest a dead connection goes unnoticed while requests wait on it: "
        "a PING after half of it in silence, given up if still silent at the end.",
    )

    breaker_cooldown_seconds: float = Field(
        default=60.0,
        gt=0,
        le=900,
        description="After a config error (a credential refused), how long that credential's "
        "devices are held back before one probe request tries it again.",
    )
    breaker_max_holds: int = Field(
        default=60,
        ge=1,
        le=10_000,
        description="Times a device may be held back by an open breaker before it is counted "
        "failed with the config error (about an hour at the default cool-down), so an event "
        "whose credential is never fixed still ends.",
    )

    # --- Worker -------------------------------------------------------------------------
    worker_concurrency: int = Field(default=8, ge=1, le=512, description="Messages in flight.")
    fanout_concurrency: int = Field(default=2, ge=1, le=64, description="Shards in flight.")
    poll_wait_seconds: int = Field(default=20, ge=0, le=20)
    shutdown_grace_seconds: float = Field(default=25.0, ge=0)
    # A coalesced stream's messages finish a few a second (one fan-out message and one
    # bundle per group): at 0.25 s each went alone, ~1.3 of the ~5.3 SQS requests a group
    # cost (issue #26). 2 s lets ~ten share a call at four groups a second, and stays well
    # inside the hidden time a finished message has left (at least two thirds of the
    # visibility timeout: the heartbeat extends it every third).
    delete_linger_seconds: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description="How long a finished message may wait for others to be deleted with it "
        "(up to 10 per DeleteMessageBatch). Keep it well under the visibility timeout: a "
        "message waiting for its delete is no longer kept hidden, and one that comes back "
        "is received again (and skipped as done).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="`fanout worker` serves Prometheus /metrics on this port (0: any free "
        "port, logged); unset: not served.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Where the worker's /metrics listens (0.0.0.0: all)."
    )
    metrics_namespace: str = Field(
        default="fanout",
        pattern=r"^[A-Za-z0-9_./#:-]{1,255}$",
        description="The CloudWatch namespace the Lambda handlers publish metrics to (EMF).",
    )
    metrics_app_label: bool = Field(
        default=True,
        description="Label the provider outcome counters with the app's key (a series per "
        "app, outcome and reason); false leaves the label empty, for deployments with "
        "thousands of apps.",
    )

    # --- Webhooks (issue #24): the sender in every worker and the WebhookFunction -------
    webhook_concurrency: int = Field(
        default=16, ge=1, le=512, description="Webhook calls in flight per worker process."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="How long a webhook call may take (connect to answer) before it counts "
        "failed and is tried again later.",
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often an idle sender looks for due deliveries."
    )
    webhook_retry_base_seconds: float = Field(
        default=5.0,
        gt=0,
        description="The first wait before a failed webhook call is tried again; doubling, "
        "at most an hour.",
    )
    webhook_retry_hours: float = Field(
        default=24.0,
        gt=0,
        description="How long a delivery is retried before it is kept as failed (replayable).",
    )
    webhook_disable_after_hours: float = Field(
        default=24.0,
        gt=0,
        description="An endpoint whose calls have all failed for this long is disabled "
        "(a replay enables it again).",
    )
    webhook_keep_days: float = Field(
        default=7.0,
        gt=0,
        description="Delivered webhook rows are deleted this long after delivery (failed "
        "ones are kept for a replay until their endpoint is deleted).",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook endpoints on loopback, private and link-local addresses, "
        "and http:// (development and tests only: a user's URL could reach your network).",
    )

    # --- Reconciler: PostgreSQL drives liveness, the queue is transport ------------------
    reconcile_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often each worker looks for overdue work."
    )
    reconcile_after_seconds: float = Field(
        default=60.0,
        ge=1,
        description="How long an event, shard or batch may be overdue (past its queue delay "
        "or lease) before its message is sent again from PostgreSQL; doubles per resend.",
    )
    reconcile_max_resends: int = Field(
        default=8,
        ge=1,
        le=30,
        description="Resends before a unit of work is given up and its devices count failed.",
    )

    # --- Paced sends (throttle_per_minute) ------------------------------------------------
    pacing_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often each worker's pacer sends the paced batches that have come due.",
    )
    pacing_read_ahead_seconds: float = Field(
        default=300.0,
        ge=1,
        description="How far ahead of now a paced event's fan-out reads and schedules its "
        "devices; the rest is read from the shard's checkpoint when the time comes.",
    )

    # --- Sources: subscribers read from the app's own tables (issue #25) ---------------------
    source_read_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="The statement timeout of a source's query when an event's audience is "
        "read from it at planning (the app's table, one read per event).",
    )
    source_role: str = Field(
        default="fanout_source",
        min_length=1,
        max_length=63,
        description="The database role a source's query runs as, read-only: only what the "
        "operator GRANTs it (USAGE on the app's schema, SELECT on its tables), never fanout's "
        "own tables. `fanout migrate` creates it (NOLOGIN) if fanout's user may; without it "
        "sources are refused, naming this setting.",
    )
    source_check_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="The statement timeout of a source's query when it is checked, on "
        "`fanout sources add|test` and POST /v1/sources.",
    )

    # --- Scheduled and local-time delivery -------------------------------------------------
    default_time_zone: str = Field(
        default="UTC",
        description="The IANA time zone of recipients without one, for deliver_at_local "
        "(quiet hours never apply to them).",
    )

    @field_validator("default_time_zone")
    @classmethod
    def _known_time_zone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {name!r} (e.g. UTC, Europe/Berlin)") from None
        return name

    # --- HTTP API -----------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_publish_rate: float = Field(
        default=50.0, gt=0, description="Publish requests per second per API key (sustained)."
    )
    api_publish_burst: int = Field(default=100, ge=1, description="Publish requests in a burst.")
    # Concurrent publishes share one transaction and one SQS request (stages/group_commit.py);
    # a group holds at most this many events. 1: every publish commits alone.
    api_publish_group_max: int = Field(
        default=500, ge=1, le=1000, description="Events committed together at most."
    )
    # A group's events share one fan-out message and their delivery batches ride shared
    # SQS messages (bundles): ~6 SQS requests per 1:1 push become a few per thousand
    # (stages/coalescing.py). Off: every event has its own messages, as before.
    coalesce_direct: bool = Field(
        default=False,
        description="Group-committed events share their fan-out and delivery messages.",
    )
    # With coalescing: how long committed events wait for others to share a fan-out
    # message (stages/group_commit.py: longer, fewer SQS requests a push, more latency;
    # 0.5 s: ~0.01 a push at 1,000 sends/s for a publish -> push p50 of ~0.8 s).
    coalesce_window_seconds: float = Field(
        default=0.5, ge=0, le=5, description="Coalescing: seconds a group gathers at most."
    )
    api_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # POST /v1/imports/{kind} reads its NDJSON body as it arrives (memory flat whatever
    # its size), so its limit is the size of an import, not of a request held in memory.
    api_max_import_bytes: int = Field(default=4 * 1024**3, ge=1024)
    # A client that never finishes a request holds a file descriptor for as long as it
    # likes otherwise: 800 half-sent requests from one address were all kept 20 s
    # (api/connection_limits.py). nginx waits 60 s for headers; fanout's clients are
    # backends on a network, not phones on a bad one.
    api_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a client has to send a request's headers (from its connection, "
        "or from the request's first byte on a kept-alive one); then the connection is closed.",
    )
    api_body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's body once its headers are in; "
        "then the connection is closed.",
    )
    api_max_connections_per_address: int = Field(
        default=100,
        ge=0,
        description="Connections one client address may hold open; the next get 429 and are "
        "closed. 0: no limit (behind a reverse proxy every connection comes from its address).",
    )
    # Past the process's limit of open files the server accepts no one: the connections it
    # holds stay below it (api/connection_limits.py, connection_budget).
    api_max_connections: int = Field(
        default=0,
        ge=0,
        description="Connections `fanout serve` holds at most; past it a new one closes the "
        "oldest waiting for a request, or gets 503 if every one is in a request. 0: the "
        "process's limit of open files less what fanout keeps for itself.",
    )
    # uvicorn's timeout_keep_alive (its default, 5 s): a connection idle between requests.
    api_keep_alive_seconds: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="Seconds a kept-alive connection may stay idle between requests.",
    )
    console_session_hours: int = Field(
        default=12, ge=1, le=24 * 30, description="How long a console sign-in lasts."
    )

    def retry_backoff(self) -> Backoff:
        """When a delivery retry batch is sent again: FANOUT_RETRY_BASE_DELAY, doubling,
        at most SQS's longest message delay (15 minutes)."""
        return Backoff(first=float(self.retry_base_delay), cap=900.0)

    def webhook_backoff(self) -> Backoff:
        """When a failed webhook call is tried again: FANOUT_WEBHOOK_RETRY_BASE_SECONDS,
        doubling, at most an hour apart."""
        return Backoff(first=self.webhook_retry_base_seconds, cap=3600.0)

    def database_dsn(self) -> str:
        """The database URL, secret included; raises ``ConfigError`` when unset."""
        if self.database_url is None:
            raise ConfigError(DATABASE_URL_UNSET)
        return self.database_url.get_secret_value()

    def migration_dsn(self) -> str:
        """Where migrations connect: FANOUT_DATABASE_DIRECT_URL, else FANOUT_DATABASE_URL.

        Not through PgBouncer in transaction mode: a migration's advisory lock belongs to a
        session, and its unlock could reach another server connection. (RDS Proxy pins the
        session instead, which is harmless for one short command.)"""
        if self.database_direct_url is not None:
            return self.database_direct_url.get_secret_value()
        if self.database_pooler == "pgbouncer":
            raise ConfigError(
                "FANOUT_DATABASE_DIRECT_URL is not set: migrations hold a session's advisory "
                "lock, which PgBouncer in transaction mode (FANOUT_DATABASE_POOLER) cannot "
                "keep; point it at PostgreSQL itself"
            )
        return self.database_dsn()

    def database_address(self) -> str:
        """Where the database is, to name in messages: ``host:port``, never the password."""
        return database_address(self.database_dsn())


def database_address(dsn: str) -> str:
    """``host:port`` of a postgresql:// URL (a ``?host=`` socket directory counts)."""
    parts = urlsplit(dsn)
    try:
        port = parts.port or 5432
    except ValueError:  # asyncpg accepts multi-host URLs; name them as written
        return parts.netloc.rsplit("@", 1)[-1]
    host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
    return f"{host}:{port}"


def invalid_settings(error: ValidationError) -> list[str]:
    """One line per invalid variable, naming it; pydantic's message never holds the value."""
    lines = []
    for item in error.errors():
        field = "_".join(str(part) for part in item["loc"])
        lines.append(f"FANOUT_{field.upper()} is invalid: {item['msg']}")
    return lines


async def load_settings() -> Settings:
    """The environment, plus the secret named by ``FANOUT_SECRETS_ARN`` if set.

    That secret (AWS Secrets Manager) is a JSON object of ``FANOUT_*`` names to values:
    the database URL and provider keys live there, not in a function's or container's
    configuration in clear. Environment variables win over the secret.
    """
    arn = os.environ.get("FANOUT_SECRETS_ARN")
    if not arn:
        return Settings()
    import botocore.exceptions
    from aiobotocore.session import get_session

    try:
        async with get_session().create_client("secretsmanager") as client:
            secret = (await client.get_secret_value(SecretId=arn))["SecretString"]
    except botocore.exceptions.NoCredentialsError:
        raise ConfigError(
            "FANOUT_SECRETS_ARN is set, but no AWS credentials were found to read the secret"
        ) from None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise Unreachable("AWS Secrets Manager", arn, "FANOUT_SECRETS_ARN", str(exc)) from None
    from_secret = {
        name.removeprefix("FANOUT_").lower(): value
        for name, value in orjson.loads(secret).items()
        if name.startswith("FANOUT_") and name not in os.environ
    }
    return Settings(**from_secret)
