"""PostgreSQL: connections, migrations, and every statement fanout runs behind a named
function with keyword arguments.

The SQL is in ``queries.py``, each statement named once with the index it relies on.
The modules here run them, one per concern, and are the only code that does: a call
site says what it does (``store.claim_shard(conn, event_id=…, shard=…, lease_seconds=…,
overdue_after=…)``) and never where a parameter sits in the statement. Results are
small dataclasses, except where rows go on as they come (the recipients the batch
packer reads, the event's progress).

- ``events``: publishing, the event's states, its progress.
- ``shards``, ``batches``: the fan-out's and the delivery's units of work, each with a
  lease and a due time, and the reconciler's claims of those overdue.
- ``recipients``: devices as batches carry them (the fan-out's hot path).
- ``subscriptions``, ``devices``, ``api_keys``: what the HTTP API and the CLI manage.
- ``seeding``: the demo's and the benchmarks' subscribers.
"""

from fanout.store.api_keys import (
    ApiKeyListing,
    StoredApiKey,
    insert_api_key,
    list_api_keys,
    live_api_key,
    revoke_api_key,
)
from fanout.store.batches import (
    DueBatch,
    batch_status,
    claim_batch,
    claim_due_batches,
    finish_batch,
    give_up_batch,
    record_held_batch,
    record_retry_batch,
    release_batch,
    renew_batch_lease,
)
from fanout.store.connection import (
    UNTRUSTWORTHY,
    acquire,
    connect,
    create_pool,
    naming_the_database,
)
from fanout.store.devices import (
    RegisteredDevice,
    deactivate_devices,
    delete_device,
    upsert_device,
)
from fanout.store.events import (
    DueEvent,
    Event,
    FirstUse,
    OpenEvents,
    claim_due_events,
    event_by_idempotency_key,
    event_progress,
    fail_event,
    finish_event,
    insert_event,
    load_event,
    lock_event,
    mark_event_enqueued,
    mark_event_fanned_out,
    mark_event_fanning_out,
    open_events,
)
from fanout.store.recipients import (
    batch_recipients,
    devices_by_id,
    topic_recipients_page,
    user_recipients,
)
from fanout.store.seeding import SeededIds, seed_devices, seed_subscriptions, seed_users
from fanout.store.shards import (
    AcceptedBatch,
    DueShard,
    LeaseStatus,
    ShardClaim,
    checkpoint_shard,
    claim_due_shards,
    claim_shard,
    finish_shard,
    give_up_shard,
    insert_shards,
    next_shard_boundary,
    release_shard,
    shard_status,
    unfinished_shards,
)
from fanout.store.subscriptions import (
    Subscription,
    find_or_create,
    find_or_create_topic,
    find_or_create_user,
    insert_users,
    subscribe,
    subscribe_users,
    unsubscribe,
    user_subscriptions_page,
)

__all__ = [
    "UNTRUSTWORTHY",
    "AcceptedBatch",
    "ApiKeyListing",
    "DueBatch",
    "DueEvent",
    "DueShard",
    "Event",
    "FirstUse",
    "LeaseStatus",
    "OpenEvents",
    "RegisteredDevice",
    "SeededIds",
    "ShardClaim",
    "StoredApiKey",
    "Subscription",
    "acquire",
    "batch_recipients",
    "batch_status",
    "checkpoint_shard",
    "claim_batch",
    "claim_due_batches",
    "claim_due_events",
    "claim_due_shards",
    "claim_shard",
    "connect",
    "create_pool",
    "deactivate_devices",
    "delete_device",
    "devices_by_id",
    "event_by_idempotency_key",
    "event_progress",
    "fail_event",
    "find_or_create",
    "find_or_create_topic",
    "find_or_create_user",
    "finish_batch",
    "finish_event",
    "finish_shard",
    "give_up_batch",
    "give_up_shard",
    "insert_api_key",
    "insert_event",
    "insert_shards",
    "insert_users",
    "list_api_keys",
    "live_api_key",
    "load_event",
    "lock_event",
    "mark_event_enqueued",
    "mark_event_fanned_out",
    "mark_event_fanning_out",
    "naming_the_database",
    "next_shard_boundary",
    "open_events",
    "record_held_batch",
    "record_retry_batch",
    "release_batch",
    "release_shard",
    "renew_batch_lease",
    "revoke_api_key",
    "seed_devices",
    "seed_subscriptions",
    "seed_users",
    "shard_status",
    "subscribe",
    "subscribe_users",
    "topic_recipients_page",
    "unfinished_shards",
    "unsubscribe",
    "upsert_device",
    "user_recipients",
    "user_subscriptions_page",
]
