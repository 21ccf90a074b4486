"""Every SQL statement fanout runs, named, with the index each one relies on.

Keeping them here (not scattered through the stages) lets one read the whole
database contract in one sitting and check each statement against the schema in
``migrations/``. Each is run by one function of the store's modules (``events``,
``shards``, ``batches``, ``recipients``, ``subscriptions``, ``devices``, ``api_keys``,
``seeding``), which names its ``$N`` parameters as keyword arguments: the rest of
fanout calls those functions and never sees a statement or a parameter's position.
"""

from fanout.queue.messages import WIRE_FIELDS

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
# key $4; NULL: the CLI and internal callers) used the idempotency key $5 before. Due $7
# seconds on: if its fan-out message is not on the queue by then, the reconciler sends it
# (the transactional outbox).
INSERT_EVENT = """
INSERT INTO events
    (topic_id, user_id, notification, api_key_id, idempotency_key, request_fingerprint, due_at)
VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
ON CONFLICT (idempotency_key, api_key_id) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

# Index: events_idempotency_key (the key leads; the scopes sharing it are filtered).
EVENT_BY_IDEMPOTENCY_KEY = """
SELECT id, request_fingerprint FROM events
WHERE idempotency_key = $2 AND api_key_id IS NOT DISTINCT FROM $1
"""

# Index: events_pkey. The fan-out message is on the queue: if the event has not started
# fanning out by due_at ($2 seconds on), the reconciler sends it again.
MARK_EVENT_ENQUEUED = """
UPDATE events SET status = 'enqueued', enqueued_at = now(),
                  due_at = now() + make_interval(secs => $2)
WHERE id = $1 AND status = 'pending'
"""

# ---------------------------------------------------------------------------------------
# Fan-out stage
# ---------------------------------------------------------------------------------------

# Index: events_pkey.
LOAD_EVENT = """
SELECT id, topic_id, user_id, notification, status, created_at FROM events WHERE id = $1
"""

# Index: events_pkey. From here the shards are the units with deadlines.
MARK_EVENT_FANNING_OUT = """
UPDATE events SET status = 'fanning_out', due_at = NULL
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

# Index: fanout_shards_pkey. Re-planning after a crash inserts nothing twice. A shard not
# claimed within $5 seconds (its message lost) is sent again by the reconciler.
INSERT_SHARDS = """
INSERT INTO fanout_shards (event_id, shard_no, lo_user_id, hi_user_id, due_at)
SELECT $1, shard_no, lo, hi, now() + make_interval(secs => $5)
FROM unnest($2::integer[], $3::bigint[], $4::bigint[]) AS s (shard_no, lo, hi)
ON CONFLICT DO NOTHING
"""

# Index: fanout_shards_pkey.
UNFINISHED_SHARDS = """
SELECT shard_no FROM fanout_shards
WHERE event_id = $1 AND status <> 'done'
ORDER BY shard_no
"""

# Index: fanout_shards_pkey. Takes the shard if nobody holds a live lease on it. It is due
# $4 seconds after its lease ends: if its holder died and its message is gone too.
CLAIM_SHARD = """
UPDATE fanout_shards
SET status = 'running', lease_until = now() + make_interval(secs => $3),
    due_at = now() + make_interval(secs => $3::float8 + $4::float8), attempts = attempts + 1
WHERE event_id = $1 AND shard_no = $2
  AND (status = 'pending' OR (status = 'running' AND lease_until < now()))
RETURNING lo_user_id, hi_user_id, cursor_user_id, recipients, devices, batches
"""

# Index: fanout_shards_pkey. A failed invocation gives its lease up, so the retry of its
# message (or another copy) can take the shard at once rather than find it busy.
RELEASE_SHARD = """
UPDATE fanout_shards
SET lease_until = now(), due_at = now() + make_interval(secs => $3), last_error = $4
WHERE event_id = $1 AND shard_no = $2 AND status = 'running'
"""

# Index: fanout_shards_pkey. With the seconds left on its lease, when held.
SHARD_STATUS = """
SELECT status, greatest(0, extract(epoch FROM lease_until - now()))::float8 AS lease_left
FROM fanout_shards WHERE event_id = $1 AND shard_no = $2
"""

# Indexes: delivery_batches_pkey, fanout_shards_pkey. After each SendMessageBatch, in one
# statement: the batches SQS accepted are recorded ('queued', with the range of users to
# re-read should their message be lost: one row per batch, never per device), and the
# shard checkpoints its cursor and renews its lease (a shard that checkpoints is alive).
# A batch re-packed after a crash has the same key and is not recorded twice.
CHECKPOINT_SHARD = """
WITH recorded AS (
    INSERT INTO delivery_batches (event_id, batch_key, attempt, status, devices, shard_no,
                                  first_user_id, last_user_id, due_at)
    SELECT $1, b.key, 0, 'queued', b.devices, $2, b.first_user, b.last_user,
           now() + make_interval(secs => $9)
    FROM unnest($10::text[], $11::integer[], $12::bigint[], $13::bigint[])
         AS b (key, devices, first_user, last_user)
    ON CONFLICT (event_id, batch_key) DO NOTHING
)
UPDATE fanout_shards
SET cursor_user_id = $3, recipients = $4, devices = $5, batches = $6,
    lease_until = now() + make_interval(secs => $7),
    due_at = now() + make_interval(secs => $7::float8 + $8::float8)
WHERE event_id = $1 AND shard_no = $2
"""

# Index: fanout_shards_pkey.
FINISH_SHARD = """
UPDATE fanout_shards
SET status = 'done', finished_at = now(), lease_until = NULL, due_at = NULL,
    recipients = $3, devices = $4, batches = $5
WHERE event_id = $1 AND shard_no = $2
"""

# Index: events_pkey. Serialises the "was this the last shard?" check between shards.
LOCK_EVENT = "SELECT 1 FROM events WHERE id = $1 FOR UPDATE"

# Index: events_pkey, fanout_shards_pkey. Once every shard is done (or given up). The
# event is then due $2 seconds on, when the reconciler checks it has ended, in case the
# last batch and the last shard finished at once and neither saw the other's commit.
MARK_EVENT_FANNED_OUT = """
UPDATE events SET status = 'fanned_out', fanned_out_at = now(),
                  due_at = now() + make_interval(secs => $2)
WHERE id = $1 AND status IN ('pending', 'enqueued', 'fanning_out')
  AND NOT EXISTS (
      SELECT 1 FROM fanout_shards WHERE event_id = $1 AND status NOT IN ('done', 'failed'))
"""

# Indexes: events_pkey, delivery_batches_open, fanout_shards_pkey. The event ends once it
# is fanned out and no batch is open; called when a batch or a shard finishes, and by the
# reconciler. delivered: every device reached but dead tokens; partially_delivered: some
# sent, some not (failed, skipped for want of a provider, or a shard given up);
# failed: nothing sent; no_recipients: nobody to send to. Returns the status set, if any.
FINISH_EVENT = """
WITH batches AS (
    SELECT coalesce(sum(sent), 0) AS sent, coalesce(sum(failed), 0) AS failed,
           coalesce(sum(skipped), 0) AS skipped
    FROM delivery_batches WHERE event_id = $1 AND status = 'done'
), shards AS (
    SELECT coalesce(sum(devices), 0) AS devices,
           count(*) FILTER (WHERE status = 'failed') AS given_up
    FROM fanout_shards WHERE event_id = $1
)
UPDATE events AS e
SET status = CASE
        WHEN s.given_up = 0 AND s.devices = 0 THEN 'no_recipients'
        WHEN b.sent = 0 THEN 'failed'
        WHEN s.given_up = 0 AND b.failed = 0 AND b.skipped = 0 THEN 'delivered'
        ELSE 'partially_delivered'
    END,
    finished_at = now(), due_at = NULL
FROM batches AS b, shards AS s
WHERE e.id = $1 AND e.status = 'fanned_out'
  AND NOT EXISTS (SELECT 1 FROM delivery_batches WHERE event_id = $1 AND status <> 'done')
RETURNING e.status
"""

# Index: events_pkey. An event that can never be fanned out (its notification cannot fit a
# batch, its fan-out message was given up): it ends failed, with the reason.
FAIL_EVENT = """
UPDATE events SET status = 'failed', finished_at = now(), due_at = NULL, last_error = $2
WHERE id = $1 AND status IN ('pending', 'enqueued', 'fanning_out')
"""

# A device as it travels in a delivery batch, written by PostgreSQL as it reads the row:
# made in Python (a tuple, a list, orjson per device) it was 60% of the fan-out worker's
# CPU (py-spy, bench/pipeline.py at 100,000 subscribers). The array's fields and their
# order come from queue/messages.py's WIRE_FIELDS, the one definition of the wire form:
# [id,"token","locale"], and for Web Push [id,"endpoint","locale","p256dh","auth"].
_DEVICE_COLUMNS = {
    "id": "d.id::text",
    "token": "to_json(d.token)::text",
    "locale": "coalesce(to_json(d.locale)::text, 'null')",
    "p256dh": "to_json(d.web_push_p256dh)::text",
    "auth": "to_json(d.web_push_auth)::text",
}


def _wire_array(fields: tuple[str, ...]) -> str:
    return "'[' || " + " || ',' || ".join(_DEVICE_COLUMNS[f] for f in fields) + " || ']'"


_DEVICE_WIRE = f"""
CASE WHEN d.platform = 'webpush' THEN {_wire_array(WIRE_FIELDS["webpush"])}
     ELSE {_wire_array(WIRE_FIELDS["apns"])} END
"""
assert WIRE_FIELDS["apns"] == WIRE_FIELDS["fcm"]

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
# when it is done or another invocation holds a live lease on it. (A batch the fan-out
# recorded is 'queued'; one sent before that bookkeeping existed is inserted here.) It is
# due $6 seconds after its lease ends.
CLAIM_BATCH = """
INSERT INTO delivery_batches (event_id, batch_key, attempt, devices, status, lease_until, due_at)
VALUES ($1, $2, $3, $4, 'running', now() + make_interval(secs => $5),
        now() + make_interval(secs => $5::float8 + $6::float8))
ON CONFLICT (event_id, batch_key) DO UPDATE
SET status = 'running', lease_until = EXCLUDED.lease_until, due_at = EXCLUDED.due_at,
    started_at = now(), devices = EXCLUDED.devices
WHERE delivery_batches.status = 'queued'
   OR (delivery_batches.status = 'running' AND delivery_batches.lease_until < now())
RETURNING 1
"""

# Index: delivery_batches_pkey. While a batch is being sent: it is alive, keep it ours.
RENEW_BATCH_LEASE = """
UPDATE delivery_batches SET lease_until = now() + make_interval(secs => $3),
                            due_at = now() + make_interval(secs => $3::float8 + $4::float8)
WHERE event_id = $1 AND batch_key = $2 AND status = 'running'
"""

# Index: delivery_batches_pkey. A failed invocation that sent nothing gives its lease up.
RELEASE_BATCH = """
UPDATE delivery_batches
SET status = 'queued', lease_until = NULL, due_at = now() + make_interval(secs => $3),
    last_error = $4
WHERE event_id = $1 AND batch_key = $2 AND status = 'running'
"""

# Index: delivery_batches_pkey. A retry batch is recorded with its device ids (only the
# devices that may still succeed: usually few) in the transaction that finishes its parent,
# before its message is sent; due once its delay and $6 seconds have passed.
RECORD_RETRY_BATCH = """
INSERT INTO delivery_batches (event_id, batch_key, attempt, status, devices, device_ids, due_at)
VALUES ($1, $2, $3, 'queued', cardinality($4::bigint[]), $4,
        now() + make_interval(secs => $5::float8 + $6::float8))
ON CONFLICT (event_id, batch_key) DO NOTHING
"""

# Index: delivery_batches_pkey. Devices an open breaker held back: recorded like a retry
# batch (they keep their attempt), with the config error that held them ($7).
RECORD_HELD_BATCH = """
INSERT INTO delivery_batches (event_id, batch_key, attempt, status, devices, device_ids, due_at,
                              held_reason)
VALUES ($1, $2, $3, 'queued', cardinality($4::bigint[]), $4,
        now() + make_interval(secs => $5::float8 + $6::float8), $7)
ON CONFLICT (event_id, batch_key) DO NOTHING
"""

# Index: delivery_batches_pkey.
BATCH_STATUS = """
SELECT status, greatest(0, extract(epoch FROM lease_until - now()))::float8 AS lease_left
FROM delivery_batches WHERE event_id = $1 AND batch_key = $2
"""

# Index: delivery_batches_pkey. Failure reasons ({reason: devices}) are summed on read.
FINISH_BATCH = """
UPDATE delivery_batches
SET status = 'done', finished_at = now(), lease_until = NULL, due_at = NULL,
    sent = $3, failed = $4, invalid = $5, skipped = $6, retried = $7, failure_reasons = $8
WHERE event_id = $1 AND batch_key = $2
"""

# Indexes: users_pkey/subscriptions_pkey and devices_active_by_user. A batch whose message
# was lost, re-read from PostgreSQL: its closed range of users, as the fan-out read them.
BATCH_RECIPIENTS = f"""
SELECT s.user_id, d.platform, {_DEVICE_WIRE} AS wire
FROM subscriptions AS s
JOIN devices AS d ON d.user_id = s.user_id AND d.active
WHERE s.topic_id = $1 AND s.user_id BETWEEN $2 AND $3
ORDER BY s.user_id
"""

# Index: devices_pkey. A retry batch re-read from its recorded device ids.
DEVICES_BY_ID = f"""
SELECT d.user_id, d.platform, {_DEVICE_WIRE} AS wire
FROM devices AS d
WHERE d.id = ANY($1::bigint[]) AND d.active
"""

# ---------------------------------------------------------------------------------------
# Reconciler: every unit of work past its due_at, taken by moving due_at on (doubling per
# resend, so a unit that is only slow is not resent in a loop), and SKIP LOCKED so that
# the reconcilers of many workers share the work rather than repeat it. $1: how many;
# $2: the base delay (FANOUT_RECONCILE_AFTER); $3: seconds to look ahead (0; tests use
# it to act "later" without waiting); $4: one event only, or NULL for all.
# ---------------------------------------------------------------------------------------

_NEXT_DUE = "now() + make_interval(secs => $2 * 2 ^ least(resends, 10))"

# Index: events_due.
CLAIM_DUE_EVENTS = f"""
UPDATE events AS e SET due_at = {_NEXT_DUE}, resends = e.resends + 1
FROM (
    SELECT id FROM events
    WHERE due_at < now() + make_interval(secs => $3)
      AND ($4::bigint IS NULL OR id = $4)
    ORDER BY due_at LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due
WHERE e.id = due.id
RETURNING e.id, e.status, e.resends
"""

# Index: fanout_shards_due.
CLAIM_DUE_SHARDS = f"""
UPDATE fanout_shards AS s SET due_at = {_NEXT_DUE}, resends = s.resends + 1
FROM (
    SELECT event_id, shard_no FROM fanout_shards
    WHERE due_at < now() + make_interval(secs => $3)
      AND ($4::bigint IS NULL OR event_id = $4)
    ORDER BY due_at LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due
WHERE s.event_id = due.event_id AND s.shard_no = due.shard_no
RETURNING s.event_id, s.shard_no, s.resends, s.last_error
"""

# Index: delivery_batches_due.
CLAIM_DUE_BATCHES = f"""
UPDATE delivery_batches AS b SET due_at = {_NEXT_DUE}, resends = b.resends + 1
FROM (
    SELECT event_id, batch_key FROM delivery_batches
    WHERE due_at < now() + make_interval(secs => $3)
      AND ($4::bigint IS NULL OR event_id = $4)
    ORDER BY due_at LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due
WHERE b.event_id = due.event_id AND b.batch_key = due.batch_key
RETURNING b.event_id, b.batch_key, b.attempt, b.devices, b.first_user_id, b.last_user_id,
          b.device_ids, b.resends, b.last_error
"""

# Index: fanout_shards_pkey. A shard resent too often: given up, so its event can end.
GIVE_UP_SHARD = """
UPDATE fanout_shards SET status = 'failed', due_at = NULL, lease_until = NULL,
                         finished_at = now(), last_error = $3
WHERE event_id = $1 AND shard_no = $2 AND status <> 'done'
"""

# Index: delivery_batches_pkey. A batch resent too often: its devices count failed.
GIVE_UP_BATCH = """
UPDATE delivery_batches
SET status = 'done', due_at = NULL, lease_until = NULL, finished_at = now(),
    failed = devices, failure_reasons = jsonb_build_object($3::text, devices)
WHERE event_id = $1 AND batch_key = $2 AND status <> 'done'
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
SELECT e.id, e.status, e.created_at, e.fanned_out_at, e.finished_at, e.last_error,
       coalesce(f.shards, 0) AS shards, coalesce(f.shards_done, 0) AS shards_done,
       coalesce(f.shards_failed, 0) AS shards_failed,
       coalesce(f.recipients, 0) AS recipients, coalesce(f.devices, 0) AS devices,
       coalesce(b.batches, 0) AS batches, coalesce(b.batches_done, 0) AS batches_done,
       coalesce(b.sent, 0) AS sent, coalesce(b.failed, 0) AS failed,
       coalesce(b.invalid, 0) AS invalid, coalesce(b.skipped, 0) AS skipped,
       b.last_finished_at, coalesce(r.reasons, '{}'::jsonb) AS failure_reasons,
       coalesce(h.held_back, '{}'::jsonb) AS held_back,
       coalesce(k.held_by_breaker, '{}'::jsonb) AS held_by_breaker
FROM events AS e
LEFT JOIN LATERAL (
    SELECT count(*) AS shards, count(*) FILTER (WHERE status = 'done') AS shards_done,
           count(*) FILTER (WHERE status = 'failed') AS shards_failed,
           sum(recipients) AS recipients, sum(devices) AS devices
    FROM fanout_shards WHERE event_id = e.id
) AS f ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS batches, count(*) FILTER (WHERE status = 'done') AS batches_done,
           sum(sent) FILTER (WHERE status = 'done') AS sent,
           sum(failed) FILTER (WHERE status = 'done') AS failed,
           sum(invalid) FILTER (WHERE status = 'done') AS invalid,
           sum(skipped) FILTER (WHERE status = 'done') AS skipped,
           max(finished_at) AS last_finished_at
    FROM delivery_batches WHERE event_id = e.id
) AS b ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(reason, devices) AS reasons
    FROM (
        SELECT r.key AS reason, sum(r.value::bigint) AS devices
        FROM delivery_batches AS d, jsonb_each_text(d.failure_reasons) AS r
        WHERE d.event_id = e.id AND d.failure_reasons IS NOT NULL
        GROUP BY r.key
    ) AS by_reason
) AS r ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(reason, n) AS held_back
    FROM (
        SELECT h.key AS reason, sum(h.value::bigint) AS n
        FROM (
            SELECT held_back FROM fanout_shards WHERE event_id = e.id
            UNION ALL
            SELECT held_back FROM delivery_batches WHERE event_id = e.id
        ) AS u, jsonb_each_text(u.held_back) AS h
        GROUP BY h.key
    ) AS by_reason
) AS h ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(held_reason, devices) AS held_by_breaker
    FROM (
        SELECT held_reason, sum(devices) AS devices
        FROM delivery_batches
        WHERE event_id = e.id AND status <> 'done' AND held_reason IS NOT NULL
        GROUP BY held_reason
    ) AS by_reason
) AS k ON true
WHERE e.id = $1
"""

# Index: events_open (partial: only the open events). The event-level gauges of the API's
# /metrics: how many events are in each unfinished state, and the oldest one's age.
EVENTS_OPEN = """
SELECT status, count(*) AS events,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds
FROM events
WHERE status IN ('pending', 'enqueued', 'fanning_out', 'fanned_out')
GROUP BY status
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
