"""Every SQL statement fanout runs, named, with the index each one relies on.

Keeping them here (not scattered through the stages) lets one read the whole
database contract in one sitting and check each statement against the schema in
``migrations/``.
"""

# ---------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------

# Index: topics_key_key (unique). Insert-or-find; an existing row is not rewritten. Returns
# NULL only if a concurrent transaction inserted the same key a moment ago: call again.
UPSERT_TOPIC = """
WITH inserted AS (
    INSERT INTO topics (key) VALUES ($1) ON CONFLICT (key) DO NOTHING RETURNING id
)
SELECT id FROM inserted UNION ALL SELECT id FROM topics WHERE key = $1 LIMIT 1
"""

# Index: users_external_id_key (unique). Same contract as UPSERT_TOPIC.
UPSERT_USER = """
WITH inserted AS (
    INSERT INTO users (external_id) VALUES ($1) ON CONFLICT (external_id) DO NOTHING
    RETURNING id
)
SELECT id FROM inserted UNION ALL SELECT id FROM users WHERE external_id = $1 LIMIT 1
"""

# Index: events_idempotency_key (unique, partial). Returns nothing when this scope (the API
# key $4; NULL: the CLI and internal callers) used the idempotency key $5 before.
INSERT_EVENT = """
INSERT INTO events
    (topic_id, user_id, notification, api_key_id, idempotency_key, request_fingerprint)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (idempotency_key, api_key_id) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

# Index: events_idempotency_key (the key leads; the scopes sharing it are filtered).
EVENT_BY_IDEMPOTENCY_KEY = """
SELECT id, request_fingerprint FROM events
WHERE idempotency_key = $2 AND api_key_id IS NOT DISTINCT FROM $1
"""

# Index: events_pkey.
MARK_EVENT_ENQUEUED = """
UPDATE events SET status = 'enqueued', enqueued_at = now()
WHERE id = $1 AND status = 'pending'
"""

# Index: events_pending (partial, status = 'pending'). The outbox sweeper's scan.
PENDING_EVENTS = """
SELECT id FROM events
WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1)
ORDER BY created_at
LIMIT $2
"""

# ---------------------------------------------------------------------------------------
# Fan-out stage
# ---------------------------------------------------------------------------------------

# Index: events_pkey.
LOAD_EVENT = "SELECT id, topic_id, user_id, notification, status FROM events WHERE id = $1"

# Index: events_pkey.
MARK_EVENT_FANNING_OUT = """
UPDATE events SET status = 'fanning_out'
WHERE id = $1 AND status IN ('pending', 'enqueued')
"""

# Index: subscriptions_pkey, index-only scan. Skips `shard_size` subscribers from `lo`
# to find where the next shard starts; planning a topic reads its index once.
NEXT_SHARD_BOUNDARY = """
SELECT user_id FROM subscriptions
WHERE topic_id = $1 AND user_id >= $2
ORDER BY user_id
OFFSET $3 LIMIT 1
"""

# Index: fanout_shards_pkey. Re-planning after a crash inserts nothing twice.
INSERT_SHARDS = """
INSERT INTO fanout_shards (event_id, shard_no, lo_user_id, hi_user_id)
SELECT $1, shard_no, lo, hi
FROM unnest($2::integer[], $3::bigint[], $4::bigint[]) AS s (shard_no, lo, hi)
ON CONFLICT DO NOTHING
"""

# Index: fanout_shards_pkey.
UNFINISHED_SHARDS = """
SELECT shard_no FROM fanout_shards
WHERE event_id = $1 AND status <> 'done'
ORDER BY shard_no
"""

# Index: fanout_shards_pkey. Takes the shard if nobody holds a live lease on it.
CLAIM_SHARD = """
UPDATE fanout_shards
SET status = 'running', lease_until = now() + make_interval(secs => $3),
    attempts = attempts + 1
WHERE event_id = $1 AND shard_no = $2
  AND (status = 'pending' OR (status = 'running' AND lease_until < now()))
RETURNING lo_user_id, hi_user_id, cursor_user_id, recipients, devices, batches
"""

# Index: fanout_shards_pkey.
SHARD_STATUS = "SELECT status FROM fanout_shards WHERE event_id = $1 AND shard_no = $2"

# Index: fanout_shards_pkey. Also renews the lease: a shard that checkpoints is alive.
CHECKPOINT_SHARD = """
UPDATE fanout_shards
SET cursor_user_id = $3, recipients = $4, devices = $5, batches = $6,
    lease_until = now() + make_interval(secs => $7)
WHERE event_id = $1 AND shard_no = $2
"""

# Index: fanout_shards_pkey.
FINISH_SHARD = """
UPDATE fanout_shards
SET status = 'done', finished_at = now(), lease_until = NULL,
    recipients = $3, devices = $4, batches = $5
WHERE event_id = $1 AND shard_no = $2
"""

# Index: events_pkey. Serialises the "was this the last shard?" check between shards.
LOCK_EVENT = "SELECT 1 FROM events WHERE id = $1 FOR UPDATE"

# Index: events_pkey, fanout_shards_pkey.
MARK_EVENT_FANNED_OUT = """
UPDATE events SET status = 'fanned_out', fanned_out_at = now()
WHERE id = $1 AND status <> 'fanned_out'
  AND NOT EXISTS (SELECT 1 FROM fanout_shards WHERE event_id = $1 AND status <> 'done')
"""

# A device as it travels in a delivery batch (messages.py): [id,"token","locale"], and for
# Web Push [id,"endpoint","locale","p256dh","auth"]. PostgreSQL writes this JSON as it
# reads the row: made in Python (a tuple, a list, orjson per device) it was 60% of the
# fan-out worker's CPU (py-spy, bench/pipeline.py at 100,000 subscribers).
_DEVICE_WIRE = """
'[' || d.id || ',' || to_json(d.token) || ',' || coalesce(to_json(d.locale)::text, 'null')
    || CASE WHEN d.platform = 'webpush'
            THEN ',' || to_json(d.web_push_p256dh) || ',' || to_json(d.web_push_auth)
            ELSE '' END
    || ']'
"""

# Indexes: subscriptions_pkey (index-only range scan, the keyset page: user_id > cursor),
# then an index probe of devices by user (devices_active_by_user) per subscriber. LATERAL
# keeps it a nested loop of such probes: with a plain join the planner hash-joined a
# sequential scan of every device (12 of the 14 ms a page took at 120,000 devices, and
# growing with the table). The LIMIT applies to subscribers, so a page never splits one
# user's devices; users without an active device come back once with NULLs so that the
# cursor still moves past them.
TOPIC_RECIPIENTS_PAGE = f"""
SELECT s.user_id, d.platform, d.wire
FROM (
    SELECT user_id FROM subscriptions
    WHERE topic_id = $1 AND user_id > $2 AND user_id < $3
    ORDER BY user_id
    LIMIT $4
) AS s
LEFT JOIN LATERAL (
    SELECT d.platform, {_DEVICE_WIRE} AS wire
    FROM devices AS d
    WHERE d.user_id = s.user_id AND d.active
) AS d ON true
ORDER BY s.user_id
"""

# Index: devices_active_by_user. The 1:1 send: one user's devices, same columns as above.
USER_RECIPIENTS = f"""
SELECT u.id AS user_id, d.platform, {_DEVICE_WIRE} AS wire
FROM users AS u
LEFT JOIN devices AS d ON d.user_id = u.id AND d.active
WHERE u.id = $1 AND u.id > $2
"""

# ---------------------------------------------------------------------------------------
# Delivery stage (one statement per batch, never per recipient)
# ---------------------------------------------------------------------------------------

# Index: delivery_batches_pkey. Returns a row when this invocation owns the batch; nothing
# when it is done or another invocation holds a live lease on it.
CLAIM_BATCH = """
INSERT INTO delivery_batches (event_id, batch_key, attempt, devices, lease_until)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (event_id, batch_key) DO UPDATE
SET lease_until = EXCLUDED.lease_until, started_at = now()
WHERE delivery_batches.status <> 'done' AND delivery_batches.lease_until < now()
RETURNING 1
"""

# Index: delivery_batches_pkey. While a batch is being sent: it is alive, keep it ours.
RENEW_BATCH_LEASE = """
UPDATE delivery_batches SET lease_until = now() + make_interval(secs => $3)
WHERE event_id = $1 AND batch_key = $2 AND status <> 'done'
"""

# Index: delivery_batches_pkey.
BATCH_STATUS = "SELECT status FROM delivery_batches WHERE event_id = $1 AND batch_key = $2"

# Index: delivery_batches_pkey.
FINISH_BATCH = """
UPDATE delivery_batches
SET status = 'done', finished_at = now(), lease_until = NULL,
    sent = $3, failed = $4, invalid = $5, skipped = $6, retried = $7
WHERE event_id = $1 AND batch_key = $2
"""

# Index: devices_pkey. One statement for all of a batch's dead tokens.
DEACTIVATE_DEVICES = """
UPDATE devices
SET active = false, deactivated_at = now(), updated_at = now(), deactivated_reason = $2
WHERE id = ANY($1::bigint[]) AND active
"""

# ---------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------

# Indexes: events_pkey, fanout_shards_pkey, delivery_batches_pkey (a few hundred rows per
# million devices: counters are summed on read, so no hot counter row is ever updated).
EVENT_PROGRESS = """
SELECT e.id, e.status, e.created_at, e.fanned_out_at,
       coalesce(f.shards, 0) AS shards, coalesce(f.shards_done, 0) AS shards_done,
       coalesce(f.recipients, 0) AS recipients, coalesce(f.devices, 0) AS devices,
       coalesce(b.sent, 0) AS sent, coalesce(b.failed, 0) AS failed,
       coalesce(b.invalid, 0) AS invalid, coalesce(b.skipped, 0) AS skipped,
       b.last_finished_at
FROM events AS e
LEFT JOIN LATERAL (
    SELECT count(*) AS shards, count(*) FILTER (WHERE status = 'done') AS shards_done,
           sum(recipients) AS recipients, sum(devices) AS devices
    FROM fanout_shards WHERE event_id = e.id
) AS f ON true
LEFT JOIN LATERAL (
    SELECT sum(sent) AS sent, sum(failed) AS failed, sum(invalid) AS invalid,
           sum(skipped) AS skipped, max(finished_at) AS last_finished_at
    FROM delivery_batches WHERE event_id = e.id AND status = 'done'
) AS b ON true
WHERE e.id = $1
"""

# ---------------------------------------------------------------------------------------
# Demo and benchmark seeding: server-side generate_series, so seeding a million
# subscribers streams nothing through Python.
# ---------------------------------------------------------------------------------------

SEED_USERS = """
WITH inserted AS (
    INSERT INTO users (external_id)
    SELECT $1 || g FROM generate_series(1, $2::integer) AS g
    RETURNING id
)
SELECT min(id) AS first_id, max(id) AS last_id FROM inserted
"""

SEED_SUBSCRIPTIONS = """
INSERT INTO subscriptions (topic_id, user_id)
SELECT $1, id FROM users WHERE id BETWEEN $2 AND $3
"""

# Tokens shaped like the real ones: APNs 64 hex digits, FCM ~160 characters, Web Push an
# endpoint URL ($5 || a unique id) with the subscription's key and auth secret ($6, $7).
# $8 lists the platforms to rotate through.
SEED_DEVICES = """
WITH inserted AS (
    INSERT INTO devices (user_id, platform, token, web_push_p256dh, web_push_auth, locale)
    SELECT u.id, p.platform,
           CASE p.platform
               WHEN 'apns' THEN encode(sha256(($4 || u.id || ':' || k)::bytea), 'hex')
               WHEN 'fcm' THEN 'f' || md5($4 || u.id || ':' || k) || ':APA91b'
                    || repeat(md5(u.id || ':' || k), 4)
               ELSE $5 || md5($4 || u.id || ':' || k)
           END,
           CASE WHEN p.platform = 'webpush' THEN $6 END,
           CASE WHEN p.platform = 'webpush' THEN $7 END,
           (ARRAY['en', 'en-GB', 'de', 'fr', 'pt-BR', 'ja'])[1 + (u.id + k) % 6]
    FROM users AS u
    CROSS JOIN generate_series(1, $3::integer) AS k
    CROSS JOIN LATERAL (
        SELECT ($8::text[])[1 + (u.id + k) % cardinality($8::text[])] AS platform
    ) AS p
    WHERE u.id BETWEEN $1 AND $2
    RETURNING id
)
SELECT min(id) AS first_id, max(id) AS last_id, count(*) AS devices FROM inserted
"""

# ---------------------------------------------------------------------------------------
# HTTP API
# ---------------------------------------------------------------------------------------

# Index: api_keys_key_id_key (unique).
INSERT_API_KEY = """
INSERT INTO api_keys (key_id, secret_hash, scopes, name) VALUES ($1, $2, $3, $4)
RETURNING id
"""

# Index: api_keys_key_id_key.
API_KEY_BY_KEY_ID = """
SELECT id, secret_hash, scopes, name FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL
"""

# Index: api_keys_key_id_key.
REVOKE_API_KEY = "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL"

LIST_API_KEYS = """
SELECT key_id, scopes, name, created_at, revoked_at FROM api_keys ORDER BY id
"""

# Index: devices_platform_token_key (unique). The same token again updates the row (it may
# have moved to another user, changed locale or come back after being deactivated).
# xmax = 0 only on a freshly inserted row: that is how the caller tells 201 from 200.
UPSERT_DEVICE = """
INSERT INTO devices (user_id, platform, token, web_push_p256dh, web_push_auth, locale)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (platform, token) DO UPDATE
SET user_id = EXCLUDED.user_id, web_push_p256dh = EXCLUDED.web_push_p256dh,
    web_push_auth = EXCLUDED.web_push_auth, locale = EXCLUDED.locale, active = true,
    updated_at = now(), deactivated_at = NULL, deactivated_reason = NULL
RETURNING id, (xmax = 0) AS created
"""

# Index: devices_pkey.
DELETE_DEVICE = "DELETE FROM devices WHERE id = $1"

# Index: subscriptions_pkey.
SUBSCRIBE = """
INSERT INTO subscriptions (topic_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING
"""

# Indexes: topics_key_key, users_external_id_key, subscriptions_pkey.
UNSUBSCRIBE = """
DELETE FROM subscriptions AS s
USING topics AS t, users AS u
WHERE t.key = $1 AND u.external_id = $2 AND s.topic_id = t.id AND s.user_id = u.id
"""

# Index: users_external_id_key. Bulk import, one statement for the whole list.
BULK_INSERT_USERS = """
INSERT INTO users (external_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING
"""

# Indexes: users_external_id_key, subscriptions_pkey.
BULK_SUBSCRIBE = """
INSERT INTO subscriptions (topic_id, user_id)
SELECT $1, id FROM users WHERE external_id = ANY($2::text[])
ON CONFLICT DO NOTHING
"""

# Indexes: users_external_id_key, subscriptions_by_user (user_id, topic_id): a keyset page.
USER_SUBSCRIPTIONS_PAGE = """
SELECT s.topic_id, t.key, s.created_at
FROM users AS u
JOIN subscriptions AS s ON s.user_id = u.id
JOIN topics AS t ON t.id = s.topic_id
WHERE u.external_id = $1 AND s.topic_id > $2
ORDER BY s.topic_id
LIMIT $3
"""
