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
# (the transactional outbox). Held ($12, its first release: send_at or its first wave): it
# is 'scheduled', due then; the reconciler's due scan releases it.
INSERT_EVENT = """
INSERT INTO events
    (topic_id, user_id, notification, api_key_id, idempotency_key, request_fingerprint, due_at,
     status, send_at, deliver_at_local, quiet_hours, expires_at)
VALUES ($1, $2, $3, $4, $5, $6,
        coalesce($12, now() + make_interval(secs => $7)),
        CASE WHEN $12::timestamptz IS NULL THEN 'pending' ELSE 'scheduled' END,
        $8, $9, $10, $11)
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
WHERE id = $1 AND status IN ('pending', 'scheduled')
"""

# Index: event_waves_pkey. A deliver_at_local event's waves, written with the event.
INSERT_WAVES = """
INSERT INTO event_waves (event_id, wave_no, kind, release_at, zones, catch_all)
SELECT $1, w.wave_no, 'local', w.release_at, string_to_array(w.zones, ' '), w.catch_all
FROM unnest($2::integer[], $3::timestamptz[], $4::text[], $5::boolean[])
     AS w (wave_no, release_at, zones, catch_all)
"""

# Indexes: subscriptions_pkey, user_preferences_pkey. The distinct time zones of an
# audience (a topic's subscribers, or one user): a few hundred at most (IANA has ~600),
# read once at publish to plan a deliver_at_local event's waves.
AUDIENCE_TIME_ZONES = """
SELECT DISTINCT p.time_zone
FROM subscriptions AS s JOIN user_preferences AS p ON p.user_id = s.user_id
WHERE s.topic_id = $1 AND p.time_zone IS NOT NULL
UNION
SELECT time_zone FROM user_preferences WHERE user_id = $2 AND time_zone IS NOT NULL
"""

# Indexes: events_pkey, event_waves_held, deferred_recipients_waiting. Cancel: an event not
# yet fanning out ends here; one under way is marked, and its shards (at their next page)
# and batches (when claimed) stop; it is due now, so the reconciler plans it once more and
# it ends once nothing is open. Held waves and waiting recipients are dropped. Returns the
# status after; nothing for an unknown event or one that has ended otherwise (delivered,
# failed ...: too late to cancel).
CANCEL_EVENT = """
WITH waves AS (
    UPDATE event_waves SET status = 'dropped' WHERE event_id = $1 AND status = 'held'
), deferred AS (
    UPDATE deferred_recipients SET wave_no = -1 WHERE event_id = $1 AND wave_no IS NULL
)
UPDATE events
SET cancelled_at = coalesce(cancelled_at, now()),
    status = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN 'cancelled'
                  ELSE status END,
    finished_at = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN now()
                       ELSE finished_at END,
    due_at = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN NULL
                  WHEN status IN ('fanning_out', 'fanned_out') THEN now()
                  ELSE due_at END
WHERE id = $1
  AND status IN ('scheduled', 'pending', 'enqueued', 'fanning_out', 'fanned_out', 'cancelled')
RETURNING status
"""

# ---------------------------------------------------------------------------------------
# Fan-out stage
# ---------------------------------------------------------------------------------------

# Index: events_pkey.
LOAD_EVENT = """
SELECT id, topic_id, user_id, notification, status, created_at, quiet_hours,
       deliver_at_local IS NOT NULL AS in_waves,
       cancelled_at IS NOT NULL AS cancelled, expires_at <= now() AS expired
FROM events WHERE id = $1
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
# claimed within $5 seconds (its message lost) is sent again by the reconciler. $6: the wave
# it fans out (NULL: the whole audience).
INSERT_SHARDS = """
INSERT INTO fanout_shards (event_id, shard_no, lo_user_id, hi_user_id, due_at, wave_no)
SELECT $1, shard_no, lo, hi, now() + make_interval(secs => $5), $6
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
RETURNING lo_user_id, hi_user_id, cursor_user_id, recipients, devices, batches, held_back,
          wave_no
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
# The recipients held back so far ($14, {reason: count}) are totals, like the others, so
# a shard resumed from this checkpoint counts nobody twice. The users of the batches
# ($16; empty unless a frequency cap applies to the event's category $15) are appended
# to user_sends: these pushes count toward the caps from now on (no index but the
# table's own: user_sends_by_user and user_sends_by_time are maintained). Returns why the
# shard must stop ('cancelled', 'expired') or NULL: the per-page check costs nothing.
CHECKPOINT_SHARD = """
WITH recorded AS (
    INSERT INTO delivery_batches (event_id, batch_key, attempt, status, devices, shard_no,
                                  first_user_id, last_user_id, due_at)
    SELECT $1, b.key, 0, 'queued', b.devices, $2, b.first_user, b.last_user,
           now() + make_interval(secs => $9)
    FROM unnest($10::text[], $11::integer[], $12::bigint[], $13::bigint[])
         AS b (key, devices, first_user, last_user)
    ON CONFLICT (event_id, batch_key) DO NOTHING
), counted AS (
    INSERT INTO user_sends (user_id, event_id, category)
    SELECT u, $1, $15::text FROM unnest($16::bigint[]) AS u
)
UPDATE fanout_shards
SET cursor_user_id = $3, recipients = $4, devices = $5, batches = $6, held_back = $14,
    lease_until = now() + make_interval(secs => $7),
    due_at = now() + make_interval(secs => $7::float8 + $8::float8)
WHERE event_id = $1 AND shard_no = $2
RETURNING (SELECT CASE WHEN e.cancelled_at IS NOT NULL THEN 'cancelled'
                       WHEN e.expires_at <= now() THEN 'expired' END
           FROM events AS e WHERE e.id = $1) AS stopped
"""

# Index: fanout_shards_pkey.
FINISH_SHARD = """
UPDATE fanout_shards
SET status = 'done', finished_at = now(), lease_until = NULL, due_at = NULL,
    recipients = $3, devices = $4, batches = $5, held_back = $6
WHERE event_id = $1 AND shard_no = $2
"""

# Indexes: subscriptions_pkey (index-only). A shard stopped by a cancel or the event's
# expiry: the subscribers it did not read, counted (not their devices) as held back.
SUBSCRIBERS_LEFT = """
SELECT count(*) FROM subscriptions WHERE topic_id = $1 AND user_id > $2 AND user_id < $3
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
  AND NOT EXISTS (SELECT 1 FROM event_waves WHERE event_id = $1 AND status = 'held')
  AND NOT EXISTS (SELECT 1 FROM deferred_recipients WHERE event_id = $1 AND wave_no IS NULL)
"""

# Indexes: event_waves_held, deferred_recipients_waiting. An event fanning out with a wave
# or deferred recipients still held is due when the first of them is: the reconciler then
# sends it to be planned again (PLAN_DUE_WAVES, RELEASE_DEFERRED), or at its expiry if that
# comes first (its holds are then dropped). With nothing held it is not due (its shards
# carry the deadlines).
HOLD_EVENT_UNTIL_NEXT_RELEASE = """
UPDATE events AS e
SET due_at = CASE WHEN h.next IS NOT NULL THEN least(h.next, e.expires_at) END, resends = 0
FROM (
    SELECT least(
        (SELECT min(release_at) FROM event_waves WHERE event_id = $1 AND status = 'held'),
        (SELECT min(release_at) FROM deferred_recipients
         WHERE event_id = $1 AND wave_no IS NULL)) AS next
) AS h
WHERE e.id = $1 AND e.status = 'fanning_out'
"""

# Index: event_waves_held. The local waves whose time has come ($2: now), taken for
# planning under the event's lock; their numbers.
PLAN_DUE_WAVES = """
UPDATE event_waves AS w SET status = 'planned'
WHERE w.event_id = $1 AND w.status = 'held' AND w.release_at <= $2
RETURNING w.wave_no
"""

# Indexes: deferred_recipients_waiting, event_waves_pkey. Recipients whose quiet hours
# have ended by $2 become one 'deferred' wave (numbered after the event's last), planned
# at once; returns its number, or nothing when nobody is due.
RELEASE_DEFERRED = """
WITH next AS (
    SELECT coalesce(max(wave_no), 0) + 1 AS wave_no FROM event_waves WHERE event_id = $1
), released AS (
    UPDATE deferred_recipients AS d SET wave_no = next.wave_no
    FROM next
    WHERE d.event_id = $1 AND d.wave_no IS NULL AND d.release_at <= $2
    RETURNING d.user_id
)
INSERT INTO event_waves (event_id, wave_no, kind, release_at, status)
SELECT $1, next.wave_no, 'deferred', $2, 'planned' FROM next
WHERE EXISTS (SELECT 1 FROM released)
RETURNING wave_no
"""

# Indexes: event_waves_held, deferred_recipients_waiting. A cancelled or expired event
# releases nothing more: its held waves are dropped, its waiting recipients too (-1).
DROP_HOLDS = """
WITH waves AS (
    UPDATE event_waves SET status = 'dropped' WHERE event_id = $1 AND status = 'held'
)
UPDATE deferred_recipients SET wave_no = -1 WHERE event_id = $1 AND wave_no IS NULL
"""

# Index: event_waves_pkey. What a shard of a wave filters its subscribers by: a local
# wave's zones (or, for the catch-all, the zones of the other local waves, which its
# recipients are not in); a deferred wave: its number (deferred_recipients).
WAVE_FILTER = """
SELECT w.kind,
       CASE WHEN w.kind = 'local' AND NOT w.catch_all THEN w.zones END AS zones_in,
       CASE WHEN w.kind = 'local' AND w.catch_all THEN coalesce(
           (SELECT array_agg(z) FROM event_waves AS o, unnest(o.zones) AS z
            WHERE o.event_id = w.event_id AND o.kind = 'local' AND o.wave_no <> w.wave_no),
           '{}') END AS zones_not_in
FROM event_waves AS w WHERE w.event_id = $1 AND w.wave_no = $2
"""

# Index: fanout_shards_pkey. The wave a shard fans out (NULL: the whole audience); a batch
# re-read from PostgreSQL is read with its shard's filter.
SHARD_WAVE = "SELECT wave_no FROM fanout_shards WHERE event_id = $1 AND shard_no = $2"

# Index: fanout_shards_pkey. Shard numbers go on across waves.
NEXT_SHARD_NO = """
SELECT coalesce(max(shard_no), -1) + 1 FROM fanout_shards WHERE event_id = $1
"""

# Indexes: events_pkey, delivery_batches_open, fanout_shards_pkey. The event ends once it
# is fanned out and no batch is open; called when a batch or a shard finishes, and by the
# reconciler. cancelled: cancelled (whatever was sent before is in its counts); expired:
# expires_at passed with nothing sent; delivered: every device reached but dead tokens;
# partially_delivered: some sent, some not (failed, skipped for want of a provider, a shard
# given up, or expired); failed: nothing sent; no_recipients: nobody to send to. Returns
# the status set, if any.
FINISH_EVENT = """
WITH batches AS (
    SELECT coalesce(sum(sent), 0) AS sent, coalesce(sum(failed), 0) AS failed,
           coalesce(sum(skipped), 0) AS skipped,
           coalesce(sum((held_back ->> 'expired')::bigint), 0) AS expired
    FROM delivery_batches WHERE event_id = $1 AND status = 'done'
), shards AS (
    SELECT coalesce(sum(devices), 0) AS devices,
           count(*) FILTER (WHERE status = 'failed') AS given_up,
           coalesce(sum((held_back ->> 'expired')::bigint), 0) AS expired,
           (SELECT count(*) FROM event_waves WHERE event_id = $1 AND status = 'dropped')
           + (SELECT count(*) FROM deferred_recipients WHERE event_id = $1 AND wave_no = -1)
           AS dropped
    FROM fanout_shards WHERE event_id = $1
)
UPDATE events AS e
SET status = CASE
        WHEN e.cancelled_at IS NOT NULL THEN 'cancelled'
        WHEN e.expires_at <= now() AND b.sent = 0 THEN 'expired'
        WHEN s.given_up = 0 AND s.devices = 0 THEN 'no_recipients'
        WHEN b.sent = 0 THEN 'failed'
        WHEN s.given_up = 0 AND b.failed = 0 AND b.skipped = 0
             AND b.expired + s.expired + s.dropped = 0 THEN 'delivered'
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

# The schedule's part of the page (issue #13), beside the audience rules. Its parameters
# are named as theirs are: {event}; {zones_in}, {zones_not_in}, {default_zone},
# {deferred_wave} (the wave a shard fans out); {quiet} (the event's quiet-hours policy),
# {now} (the instant quiet windows are judged at), {recheck} (read before: a lost batch
# re-read, a shard resumed).
#
# _WAVE_MEMBERS: which subscribers this shard's wave fans out, inside the subscribers'
# subquery, so its LIMIT counts only them and nobody else comes back: a local wave's
# zones ({zones_in}, or for the catch-all none of {zones_not_in}; a user's zone is their
# own or {default_zone}), a deferred wave's recipients ({deferred_wave}). All NULL for a
# whole-audience shard. Index: user_preferences_pkey, deferred_recipients_by_wave (one
# probe per subscriber, only for a wave's shard).
_USER_ZONE = """coalesce(
    (SELECT z.time_zone FROM user_preferences AS z WHERE z.user_id = sub.user_id),
    {default_zone}::text)"""
_WAVE_MEMBERS = f"""
      AND ({{zones_in}}::text[] IS NULL OR {_USER_ZONE} = ANY({{zones_in}}::text[]))
      AND ({{zones_not_in}}::text[] IS NULL OR {_USER_ZONE} <> ALL({{zones_not_in}}::text[]))
      AND ({{deferred_wave}}::integer IS NULL OR EXISTS (
          SELECT 1 FROM deferred_recipients AS r
          WHERE r.event_id = {{event}}::bigint AND r.wave_no = {{deferred_wave}}::integer
            AND r.user_id = sub.user_id))"""
# A user's quiet window at {now} in their own zone (no zone: quiet hours never apply), for
# preferences aliased {prefs}. The window [quiet_start, quiet_end) crosses midnight when it
# ends before it starts; the same rule as stages/schedule.in_quiet_window, which the tests
# hold it to through the nights the clocks change.
_LOCAL_NOW = "({now}::timestamptz AT TIME ZONE {prefs}.time_zone)"
_IN_QUIET_WINDOW = f"""(CASE WHEN {{prefs}}.quiet_start <= {{prefs}}.quiet_end
      THEN {_LOCAL_NOW}::time >= {{prefs}}.quiet_start AND {_LOCAL_NOW}::time < {{prefs}}.quiet_end
      ELSE {_LOCAL_NOW}::time >= {{prefs}}.quiet_start OR {_LOCAL_NOW}::time < {{prefs}}.quiet_end
      END)"""
# When that window ends, as an instant: the next quiet_end on the user's clock.
_QUIET_WINDOW_END = f"""(({_LOCAL_NOW}::date
      + CASE WHEN {_LOCAL_NOW}::time < {{prefs}}.quiet_end THEN 0 ELSE 1 END
      + {{prefs}}.quiet_end) AT TIME ZONE {{prefs}}.time_zone)"""
# The schedule's held-back reasons, after the audience rules (an opted-out user is
# opted_out, not deferred). deferred: inside their quiet hours with the policy 'defer'
# (recorded in deferred_recipients, sent when the window ends), or, when {recheck}, one
# deferred already, whatever the time and policy: their deferred wave sends to them,
# nothing else does (a deferred_recipients_pkey probe, skipped on a first read).
# quiet_hours: inside them with the policy 'drop'.
SCHEDULE_RULES: tuple[tuple[str, str], ...] = (
    (
        "deferred",
        """({recheck}::boolean AND EXISTS (
            SELECT 1 FROM deferred_recipients AS r
            WHERE r.event_id = {event}::bigint AND r.user_id = sub.user_id
              AND ({deferred_wave}::integer IS NULL
                   OR r.wave_no IS DISTINCT FROM {deferred_wave}::integer)))
        OR ({quiet}::text = 'defer' AND p.time_zone IS NOT NULL AND p.quiet_start IS NOT NULL
            AND """
        + _IN_QUIET_WINDOW.replace("{prefs}", "p")
        + ")",
    ),
    (
        "quiet_hours",
        """{quiet}::text = 'drop' AND p.time_zone IS NOT NULL AND p.quiet_start IS NOT NULL
            AND """
        + _IN_QUIET_WINDOW.replace("{prefs}", "p"),
    ),
)


def _schedule_parameters(first: int) -> dict[str, str]:
    """The schedule's parameters, numbered from ``first``."""
    names = ("zones_in", "zones_not_in", "default_zone", "deferred_wave", "quiet", "now")
    numbered = {name: f"${first + i}" for i, name in enumerate(names)}
    return {**numbered, "recheck": f"${first + len(names)}"}


# ---------------------------------------------------------------------------------------
# Audience rules (issue #13): who of the subscribers read is held back on purpose, and
# why. The first rule that holds names the reason, so a user both opted out and capped is
# counted once, as opted_out. Each rule is a condition on the subscriber ``sub.user_id``
# and their preferences ``p`` (a user_preferences row, all NULL when they have none), with
# the statement's parameters for the event's topic, id and category written {topic},
# {event}, {category}. Another rule (quiet hours) goes beside these, in the order its
# reason should win. A held-back user comes back as one row with NULL device columns and
# its reason, so the cursor moves past them and the shard counts them at its checkpoint.
# ---------------------------------------------------------------------------------------

AUDIENCE_RULES: tuple[tuple[str, str], ...] = (
    # No index of its own: ``p`` is the row the page already probed (user_preferences_pkey).
    ("opted_out", "p.opted_out OR {category}::text = ANY(p.opted_out_categories)"),
    # Index: topic_mutes_pkey (user_id, topic_id), one probe per subscriber. A mute whose
    # until has passed no longer holds anyone back. OFFSET 0 keeps it a probe: without it
    # PostgreSQL may hash every mute of the topic for each page instead.
    (
        "muted",
        """EXISTS (
            SELECT 1 FROM topic_mutes AS m
            WHERE m.user_id = sub.user_id AND m.topic_id = {topic}::bigint
              AND (m.until IS NULL OR m.until > now())
            OFFSET 0)""",
    ),
    # Index: user_sends_by_user (user_id, sent_at) INCLUDE (category, event_id): per cap
    # that applies (the ``caps`` CTE, frequency_caps_pkey), an index-only range scan of the
    # user's sends in the window, stopped at max_sends rows. The window is rolling: a send
    # exactly window_seconds old no longer counts. The event's own sends never count
    # against it, so a lost batch re-read later sees what the fan-out saw.
    (
        "capped",
        """EXISTS (
            SELECT 1 FROM caps AS c
            WHERE c.max_sends <= (
                SELECT count(*) FROM (
                    SELECT 1 FROM user_sends AS r
                    WHERE r.user_id = sub.user_id
                      AND r.sent_at > now() - make_interval(secs => c.window_seconds)
                      AND (c.category = '*' OR r.category = c.category)
                      AND r.event_id <> {event}::bigint
                    LIMIT c.max_sends
                ) AS recent))""",
    ),
)

# The frequency caps that apply to the event's category: '*' and its own (a few rows,
# read once per statement).
_CAPS = """caps AS MATERIALIZED (
    SELECT category, max_sends, window_seconds FROM frequency_caps
    WHERE category = '*' OR category = {category}::text
)"""


def _held_back_reason(**parameters: str) -> str:
    whens = "\n".join(
        f"        WHEN {rule.format(**parameters)} THEN '{reason}'"
        for reason, rule in (*AUDIENCE_RULES, *SCHEDULE_RULES)
    )
    return f"CASE\n{whens}\n    END"


def _recipients(subscribers: str, **parameters: str) -> str:
    """Rows (user_id, platform, wire, held_back, release_at) for ``subscribers`` (a query
    of ``sub.user_id`` in order, with ``{wave_members}`` where a wave's filter goes): a
    user sent to comes with one row per active device (or one of NULLs without any); a
    user held back, with one row of NULL device columns and the reason, when they have an
    active device (else NULL: nobody was kept from anything); a deferred one, with when
    their quiet window ends (the stage records them with DEFER_RECIPIENTS).

    Index: user_preferences_pkey, probed per subscriber. LATERAL with OFFSET 0 keeps it a
    probe: a plain join may be planned as a merge or hash join over the whole table. The
    OFFSET 0 of ``s`` has the rules evaluated once per subscriber: without it PostgreSQL
    inlined the reason into each place it is used and ran the rules three times. Whether a
    held-back user has a device is a probe of devices_active_by_user with LIMIT 1, inside
    the same LATERAL (an EXISTS there was planned as a hash of every active device).
    """
    audience = subscribers.format(wave_members=_WAVE_MEMBERS.format(**parameters))
    release_at = _QUIET_WINDOW_END.replace("{prefs}", "s").format(**parameters)
    return f"""
WITH {_CAPS.format(**parameters)}
SELECT s.user_id, d.platform, d.wire, d.held_back,
       CASE WHEN d.held_back = 'deferred' THEN {release_at} END AS release_at
FROM (
    SELECT sub.user_id, {_held_back_reason(**parameters)} AS held_back,
           p.time_zone, p.quiet_end
    FROM ({audience}) AS sub
    LEFT JOIN LATERAL (
        SELECT * FROM user_preferences AS up WHERE up.user_id = sub.user_id OFFSET 0
    ) AS p ON true
    OFFSET 0
) AS s
LEFT JOIN LATERAL (
    SELECT d.platform, {_DEVICE_WIRE} AS wire, NULL::text AS held_back
    FROM devices AS d
    WHERE s.held_back IS NULL AND d.user_id = s.user_id AND d.active
    UNION ALL
    (SELECT NULL, NULL, s.held_back
     FROM devices AS h
     WHERE s.held_back IS NOT NULL AND h.user_id = s.user_id AND h.active
     LIMIT 1)
) AS d ON true
ORDER BY s.user_id
"""


# Indexes: subscriptions_pkey (index-only range scan, the keyset page: user_id > cursor),
# then per subscriber the audience rules' probes (above) and an index probe of devices by
# user (devices_active_by_user). LATERAL keeps it a nested loop of such probes: with a
# plain join the planner hash-joined a sequential scan of every device (12 of the 14 ms a
# page took at 120,000 devices, and growing with the table). The LIMIT applies to
# subscribers, so a page never splits one user's devices; users without an active device
# come back once with NULLs so that the cursor still moves past them. $5: the event, $6:
# its category.
TOPIC_RECIPIENTS_PAGE = _recipients(
    """SELECT sub.user_id FROM subscriptions AS sub
    WHERE sub.topic_id = $1 AND sub.user_id > $2 AND sub.user_id < $3 {wave_members}
    ORDER BY sub.user_id
    LIMIT $4""",
    topic="$1",
    event="$5",
    category="$6",
    **_schedule_parameters(7),
)

# Indexes: users_pkey, then as above. The 1:1 send: one user's devices, same columns; no
# topic, so no mute applies. $3: the event, $4: its category.
USER_RECIPIENTS = _recipients(
    """SELECT sub.user_id
    FROM (SELECT id AS user_id FROM users WHERE id = $1 AND id > $2) AS sub
    WHERE true {wave_members}""",
    topic="NULL",
    event="$3",
    category="$4",
    **_schedule_parameters(5),
)

# Index: deferred_recipients_pkey. A page's deferred users and when each window ends, one
# statement per page, never a round trip per recipient; a page read again after a crash
# records nobody twice. (Recorded in the page statement itself, as a data-modifying CTE,
# PostgreSQL materialised the page: 1.5-2x the time of a page.)
DEFER_RECIPIENTS = """
INSERT INTO deferred_recipients (event_id, user_id, release_at)
SELECT $1, d.user_id, d.release_at
FROM unnest($2::bigint[], $3::timestamptz[]) AS d (user_id, release_at)
ON CONFLICT DO NOTHING
"""

# ---------------------------------------------------------------------------------------
# Delivery stage (one statement per batch, never per recipient)
# ---------------------------------------------------------------------------------------

# Index: delivery_batches_pkey. Returns a row when this invocation owns the batch; nothing
# when it is done or another invocation holds a live lease on it. (A batch the fan-out
# recorded is 'queued'; one sent before that bookkeeping existed is inserted here.) It is
# due $6 seconds after its lease ends. The row says whether the event was cancelled or
# has expired: the check costs no round trip of its own. A message re-read from
# PostgreSQL carries no devices ($4 = 0): the count recorded stays.
CLAIM_BATCH = """
INSERT INTO delivery_batches (event_id, batch_key, attempt, devices, status, lease_until, due_at)
VALUES ($1, $2, $3, $4, 'running', now() + make_interval(secs => $5),
        now() + make_interval(secs => $5::float8 + $6::float8))
ON CONFLICT (event_id, batch_key) DO UPDATE
SET status = 'running', lease_until = EXCLUDED.lease_until, due_at = EXCLUDED.due_at,
    started_at = now(),
    devices = CASE WHEN EXCLUDED.devices > 0 THEN EXCLUDED.devices
                   ELSE delivery_batches.devices END
WHERE delivery_batches.status = 'queued'
   OR (delivery_batches.status = 'running' AND delivery_batches.lease_until < now())
RETURNING (SELECT CASE WHEN e.cancelled_at IS NOT NULL THEN 'cancelled'
                       WHEN e.expires_at <= now() THEN 'expired' END
           FROM events AS e WHERE e.id = $1) AS stopped
"""

# Index: delivery_batches_pkey. A claimed batch whose event was cancelled or expired while
# it waited: done, sending nothing, its devices held back for that reason ($3).
FINISH_BATCH_HELD = """
UPDATE delivery_batches
SET status = 'done', finished_at = now(), lease_until = NULL, due_at = NULL,
    held_back = jsonb_build_object($3::text, devices)
WHERE event_id = $1 AND batch_key = $2
RETURNING devices
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

# Indexes: subscriptions_pkey, the audience rules' and devices_active_by_user. A batch
# whose message was lost, re-read from PostgreSQL: its closed range of users, as the
# fan-out read them, the same users held back (the event's own sends do not count toward
# its caps). $4: the event, $5: its category.
BATCH_RECIPIENTS = _recipients(
    """SELECT sub.user_id FROM subscriptions AS sub
    WHERE sub.topic_id = $1 AND sub.user_id BETWEEN $2 AND $3 {wave_members}""",
    topic="$1",
    event="$4",
    category="$5",
    **_schedule_parameters(6),
)

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
# million devices: counters are summed on read, so no hot counter row is ever updated),
# event_waves_pkey, deferred_recipients_pkey (one row per deferred recipient).
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
       coalesce(hd.devices, 0) AS held_back_devices,
       e.send_at, e.deliver_at_local, e.quiet_hours, e.expires_at, e.cancelled_at,
       coalesce(w.waves, '[]'::jsonb) AS waves,
       coalesce(dr.waiting, 0) AS deferred_waiting, coalesce(dr.released, 0) AS deferred_released,
       coalesce(dr.dropped, 0) AS deferred_dropped,
       dr.next_release_at AS deferred_next_release_at,
       dr.last_release_at AS deferred_last_release_at,
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
    SELECT sum(h.value::bigint) AS devices
    FROM delivery_batches AS d, jsonb_each_text(d.held_back) AS h
    WHERE d.event_id = e.id
) AS hd ON true
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
               'wave', wave_no, 'kind', kind, 'release_at', release_at, 'zones', zones,
               'catch_all', catch_all, 'status', status) ORDER BY wave_no) AS waves
    FROM event_waves WHERE event_id = e.id
) AS w ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE wave_no IS NULL) AS waiting,
           count(*) FILTER (WHERE wave_no > 0) AS released,
           count(*) FILTER (WHERE wave_no = -1) AS dropped,
           min(release_at) FILTER (WHERE wave_no IS NULL) AS next_release_at,
           max(release_at) AS last_release_at
    FROM deferred_recipients WHERE event_id = e.id
) AS dr ON true
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

# ---------------------------------------------------------------------------------------
# Audience controls (issue #13): preferences, mutes, frequency caps
# ---------------------------------------------------------------------------------------

# Indexes: users_external_id_key, user_preferences_pkey. Bulk and single alike, one
# statement: $1 is a JSON array of {user_id (external), time_zone, quiet_start, quiet_end,
# opted_out, opted_out_categories}, each user once (the caller dedupes: ON CONFLICT cannot
# touch a row twice), the users already created. A user's settings are replaced whole.
UPSERT_PREFERENCES = """
INSERT INTO user_preferences (user_id, time_zone, quiet_start, quiet_end, opted_out,
                              opted_out_categories, updated_at)
SELECT u.id, x.time_zone, x.quiet_start, x.quiet_end, coalesce(x.opted_out, false),
       coalesce(x.opted_out_categories, '{}'), now()
FROM jsonb_to_recordset($1::jsonb) AS x (user_id text, time_zone text, quiet_start time,
                                         quiet_end time, opted_out boolean,
                                         opted_out_categories text[])
JOIN users AS u ON u.external_id = x.user_id
ON CONFLICT (user_id) DO UPDATE
SET time_zone = EXCLUDED.time_zone, quiet_start = EXCLUDED.quiet_start,
    quiet_end = EXCLUDED.quiet_end, opted_out = EXCLUDED.opted_out,
    opted_out_categories = EXCLUDED.opted_out_categories, updated_at = now()
"""

# Indexes: users_external_id_key, user_preferences_pkey, topic_mutes_pkey (its user_id
# leads). A user's settings (NULL columns when none are set: the defaults) and their mutes
# still in force; no row for an unknown user.
USER_PREFERENCES = """
SELECT p.time_zone, p.quiet_start, p.quiet_end, coalesce(p.opted_out, false) AS opted_out,
       coalesce(p.opted_out_categories, '{}') AS opted_out_categories,
       coalesce((
           SELECT jsonb_agg(jsonb_build_object('topic', t.key, 'until', m.until)
                            ORDER BY t.key)
           FROM topic_mutes AS m JOIN topics AS t ON t.id = m.topic_id
           WHERE m.user_id = u.id AND (m.until IS NULL OR m.until > now())
       ), '[]'::jsonb) AS mutes
FROM users AS u
LEFT JOIN user_preferences AS p ON p.user_id = u.id
WHERE u.external_id = $1
"""

# Index: topic_mutes_pkey. Muting again moves until (NULL: until unmuted).
MUTE_TOPIC = """
INSERT INTO topic_mutes (user_id, topic_id, until) VALUES ($1, $2, $3)
ON CONFLICT (user_id, topic_id) DO UPDATE SET until = EXCLUDED.until, created_at = now()
"""

# Indexes: topics_key_key, users_external_id_key, topic_mutes_pkey.
UNMUTE_TOPIC = """
DELETE FROM topic_mutes AS m
USING topics AS t, users AS u
WHERE t.key = $1 AND u.external_id = $2 AND m.topic_id = t.id AND m.user_id = u.id
"""

# Index: frequency_caps_pkey.
PUT_FREQUENCY_CAP = """
INSERT INTO frequency_caps (category, max_sends, window_seconds) VALUES ($1, $2, $3)
ON CONFLICT (category) DO UPDATE
SET max_sends = EXCLUDED.max_sends, window_seconds = EXCLUDED.window_seconds,
    updated_at = now()
RETURNING (xmax = 0) AS created
"""

# Index: frequency_caps_pkey.
DELETE_FREQUENCY_CAP = "DELETE FROM frequency_caps WHERE category = $1"

LIST_FREQUENCY_CAPS = """
SELECT category, max_sends, window_seconds, updated_at FROM frequency_caps ORDER BY category
"""

# Index: frequency_caps_pkey. Whether the fan-out of an event of this category must record
# its sends in user_sends (read once per shard).
CAPS_APPLY = """
SELECT EXISTS (SELECT 1 FROM frequency_caps WHERE category = '*' OR category = $1::text)
"""

# Index: user_sends_by_time (BRIN). Up to $1 sends older than the longest cap's window (all
# of them when no cap is set): they can no longer count. Run by the reconciler.
PRUNE_USER_SENDS = """
DELETE FROM user_sends
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM user_sends
    WHERE sent_at < now() - make_interval(
        secs => (SELECT coalesce(max(window_seconds), 0) FROM frequency_caps))
    LIMIT $1
))
"""

# Seeding the demo's and the benchmark's preferences (server-side, as SEED_USERS): users
# $1..$2 get a time zone from $5, and by their id modulo 100: [0, $3) opted out of
# everything, [$3, $3 + $4) quiet hours around the present hour in their zone (from an
# hour ago to two hours on, crossing midnight where it falls), [$6, $6 + $7) opted out of
# category $8.
SEED_PREFERENCES = """
INSERT INTO user_preferences (user_id, time_zone, quiet_start, quiet_end, opted_out,
                              opted_out_categories)
SELECT u.id, z.zone,
       CASE WHEN q.quiet THEN z.hour - interval '1 hour' END,
       CASE WHEN q.quiet THEN z.hour + interval '2 hours' END,
       u.id % 100 < $3,
       CASE WHEN u.id % 100 >= $6 AND u.id % 100 < $6 + $7 THEN ARRAY[$8::text]
            ELSE '{}' END
FROM users AS u
CROSS JOIN LATERAL (
    SELECT zone, date_trunc('hour', (now() AT TIME ZONE zone)::time)::time AS hour
    FROM (SELECT ($5::text[])[1 + u.id % cardinality($5::text[])] AS zone) AS picked
) AS z
CROSS JOIN LATERAL (SELECT u.id % 100 >= $3 AND u.id % 100 < $3 + $4 AS quiet) AS q
WHERE u.id BETWEEN $1 AND $2
ON CONFLICT (user_id) DO NOTHING
"""

# Seeding mutes: of users $1..$2, those whose id modulo 100 falls in [$3, $3 + $5) mute
# topic $4, half of them until an hour from now (still in force).
SEED_MUTES = """
INSERT INTO topic_mutes (user_id, topic_id, until)
SELECT u.id, $4, CASE WHEN u.id % 2 = 0 THEN now() + interval '1 hour' END
FROM users AS u
WHERE u.id BETWEEN $1 AND $2 AND u.id % 100 >= $3 AND u.id % 100 < $3 + $5
ON CONFLICT DO NOTHING
"""

# Seeding pushes already sent: users $1..$2 whose id modulo 100 falls in [$3, $3 + $4)
# got $5 pushes of category $6 (NULL: none) an hour ago, as an earlier event $7 would
# have recorded them.
SEED_USER_SENDS = """
INSERT INTO user_sends (user_id, event_id, category, sent_at)
SELECT u.id, $7, $6::text, now() - interval '1 hour'
FROM users AS u CROSS JOIN generate_series(1, $5::integer)
WHERE u.id BETWEEN $1 AND $2 AND u.id % 100 >= $3 AND u.id % 100 < $3 + $4
"""

# ---------------------------------------------------------------------------------------
# Provider quotas (providers/quota.py): a token bucket per credential, leased in slices
# ---------------------------------------------------------------------------------------

# Index: provider_quotas_pkey. quota.grant() in one atomic statement: refill the bucket
# ($3 tokens/s, at most $4) from updated_at to now ($5, the caller's clock), then take up
# to $2 whole tokens, none while paused. A new credential starts full. SET's expressions
# all read the row as it was, so the refilled amount is written out in each.
LEASE_QUOTA = """
INSERT INTO provider_quotas AS q (credential, tokens, updated_at, last_grant)
VALUES ($1, $4 - LEAST($2, floor($4)), $5, LEAST($2, floor($4)))
ON CONFLICT (credential) DO UPDATE SET
    last_grant = CASE WHEN q.paused_until > $5 THEN 0 ELSE
        LEAST($2, floor(LEAST($4, q.tokens + GREATEST(0, $5 - q.updated_at) * $3))) END,
    tokens = LEAST($4, q.tokens + GREATEST(0, $5 - q.updated_at) * $3)
        - CASE WHEN q.paused_until > $5 THEN 0 ELSE
            LEAST($2, floor(LEAST($4, q.tokens + GREATEST(0, $5 - q.updated_at) * $3))) END,
    updated_at = GREATEST(q.updated_at, $5)
RETURNING last_grant AS granted, tokens AS tokens_left, paused_until
"""

# Index: provider_quotas_pkey. A 429's Retry-After: no lease grants anything before $2.
PAUSE_QUOTA = """
INSERT INTO provider_quotas AS q (credential, tokens, updated_at, paused_until)
VALUES ($1, 0, $2, $2)
ON CONFLICT (credential) DO UPDATE SET paused_until = GREATEST(q.paused_until, $2)
"""

# ---------------------------------------------------------------------------------------
# Per-device failures and the operator console (api/console/). The delivery stage adds one
# statement per batch (RECORD_BATCH_DETAIL, in the transaction that finishes it); the rest
# are the console's reads, a few per page, none per device sent to.
# ---------------------------------------------------------------------------------------

# Indexes: delivery_batches_pkey; delivery_failures_by_device, delivery_failures_at. A row per
# device the batch did not send to, as columns ($4..$7), and its outcomes per platform ($3).
RECORD_BATCH_DETAIL = """
WITH failures AS (
    INSERT INTO delivery_failures (event_id, batch_key, device_id, platform, outcome, reason)
    SELECT $1, $2, f.device_id, f.platform, f.outcome, f.reason
    FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[])
         AS f (device_id, platform, outcome, reason)
)
UPDATE delivery_batches SET outcomes = $3 WHERE event_id = $1 AND batch_key = $2
"""

# EVENT_LIST reads each event's counts with EVENT_PROGRESS itself, so the console shows the
# very numbers `GET /v1/events/{id}` does.
assert EVENT_PROGRESS.count("$1") == 1

# Indexes: events_pkey (newest first), events_by_topic with a topic ($1), then
# EVENT_PROGRESS's per event. $2: one status; $3: one event; $4: how many.
EVENT_LIST = f"""
SELECT p.*, t.key AS topic, u.external_id AS user_external_id,
       picked.notification ->> 'title' AS title,
       coalesce(picked.notification ->> 'kind', 'alert') AS kind
FROM (
    SELECT id, topic_id, user_id, notification FROM events
    WHERE ($1::text IS NULL OR topic_id = (SELECT id FROM topics WHERE key = $1))
      AND ($2::text IS NULL OR status = $2)
      AND ($3::bigint IS NULL OR id = $3)
    ORDER BY id DESC
    LIMIT $4
) AS picked
CROSS JOIN LATERAL ({EVENT_PROGRESS.replace("$1", "picked.id")}) AS p
LEFT JOIN topics AS t ON t.id = picked.topic_id
LEFT JOIN users AS u ON u.id = picked.user_id
ORDER BY picked.id DESC
"""

# Index: delivery_batches_pkey. Devices sent (and not sent) per interval of $2 seconds after
# the event was published, by when their batch's outcome was recorded.
EVENT_THROUGHPUT = """
SELECT extract(epoch FROM date_bin(make_interval(secs => $2), b.finished_at, e.created_at)
                          - e.created_at)::float8 AS offset_seconds,
       sum(b.sent)::bigint AS sent, sum(b.failed + b.invalid + b.skipped)::bigint AS not_sent
FROM delivery_batches AS b
JOIN events AS e ON e.id = b.event_id
WHERE b.event_id = $1 AND b.status = 'done' AND b.finished_at IS NOT NULL
GROUP BY 1
ORDER BY 1
"""

# Index: delivery_batches_pkey. Seconds from publication to a batch's recorded outcome, at
# each fraction in $2, weighted by the devices each batch sent: the latency of a push to
# its provider's acceptance, to within the time a batch takes to record.
EVENT_LATENCY_PERCENTILES = """
WITH batches AS (
    SELECT extract(epoch FROM b.finished_at - e.created_at)::float8 AS seconds, b.sent
    FROM delivery_batches AS b
    JOIN events AS e ON e.id = b.event_id
    WHERE b.event_id = $1 AND b.status = 'done' AND b.sent > 0
), running AS (
    SELECT seconds, sum(sent) OVER (ORDER BY seconds ROWS UNBOUNDED PRECEDING) AS upto,
           sum(sent) OVER () AS total
    FROM batches
)
SELECT q.fraction, (SELECT min(seconds) FROM running WHERE upto >= q.fraction * total) AS seconds
FROM unnest($2::float8[]) AS q (fraction)
"""

# Index: delivery_batches_pkey. Devices per (platform, outcome), from each batch's outcomes.
EVENT_OUTCOMES_BY_PLATFORM = """
SELECT p.key AS platform, o.key AS outcome, sum(o.value::bigint)::bigint AS devices
FROM delivery_batches AS b, jsonb_each(b.outcomes) AS p, jsonb_each_text(p.value) AS o
WHERE b.event_id = $1 AND b.outcomes IS NOT NULL
GROUP BY 1, 2
ORDER BY 1, 2
"""

# Index: delivery_failures_by_device (the event leads). The most common answers, $2 of them.
EVENT_FAILURES_BY_REASON = """
SELECT platform, outcome, reason, count(*) AS devices
FROM delivery_failures
WHERE event_id = $1
GROUP BY 1, 2, 3
ORDER BY devices DESC, platform, outcome
LIMIT $2
"""

# Index: delivery_failures_by_device (the event leads). Devices of one outcome ($2), $3 of them.
EVENT_DEVICE_FAILURES = """
SELECT device_id, batch_key, platform, outcome, reason, at
FROM delivery_failures
WHERE event_id = $1 AND outcome = $2
ORDER BY at, device_id
LIMIT $3
"""

# Index: fanout_shards_pkey.
EVENT_SHARDS = """
SELECT shard_no, lo_user_id, hi_user_id, status, cursor_user_id, attempts, resends,
       recipients, devices, batches, finished_at, last_error
FROM fanout_shards
WHERE event_id = $1
ORDER BY shard_no
LIMIT $2
"""

# Index: delivery_batches_pkey.
EVENT_BATCH_SUMMARY = """
SELECT count(*) FILTER (WHERE status = 'done') AS done,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE attempt > 0) AS retry_batches,
       coalesce(sum(retried), 0)::bigint AS retried_devices,
       count(*) FILTER (WHERE resends > 0) AS resent,
       count(*) FILTER (WHERE status = 'done' AND outcomes IS NULL) AS without_detail
FROM delivery_batches
WHERE event_id = $1
"""

# Index: delivery_batches_pkey. Open batches first, then the latest finished; $2 of them.
EVENT_BATCHES = """
SELECT batch_key, attempt, status, devices, sent, failed, invalid, skipped, retried,
       started_at, finished_at, resends, last_error
FROM delivery_batches
WHERE event_id = $1
ORDER BY status = 'done', finished_at DESC NULLS FIRST, batch_key
LIMIT $2
"""

# Index: users_external_id_key.
USER_BY_EXTERNAL_ID = "SELECT id, external_id FROM users WHERE external_id = $1"

# Index: devices_pkey.
DEVICE_OWNER = """
SELECT u.id, u.external_id FROM devices AS d JOIN users AS u ON u.id = d.user_id WHERE d.id = $1
"""

# Index: devices_by_user. Every device of the user, active or not (never the token).
USER_DEVICE_HISTORY = """
SELECT id, platform, locale, active, created_at, deactivated_at, deactivated_reason
FROM devices
WHERE user_id = $1
ORDER BY id
"""

# Index: delivery_batches_pkey (the event's few batches per million devices): the fan-out
# batches whose closed range of users holds user $2, and the retry batches naming any of
# the devices $3. A batch the delivery claimed before the fan-out's checkpoint recorded it
# has no range in its row; its key names it (s<shard>:<first>-<last>, batching.users_of_key).
BATCHES_CARRYING = r"""
SELECT batch_key, attempt, status, devices, sent, failed, invalid, skipped, retried,
       started_at, finished_at, (outcomes IS NOT NULL) AS detailed, device_ids,
       failure_reasons
FROM delivery_batches
WHERE event_id = $1
  AND ((coalesce(first_user_id, substring(batch_key FROM '^s\d+:(\d+)-\d+$')::bigint) <= $2
        AND coalesce(last_user_id, substring(batch_key FROM '^s\d+:\d+-(\d+)$')::bigint) >= $2)
       OR device_ids && $3::bigint[])
ORDER BY attempt, batch_key
"""

# Index: fanout_shards_pkey (the event leads; its few shards are checked).
SHARD_OF_USER = """
SELECT shard_no, status, cursor_user_id
FROM fanout_shards
WHERE event_id = $1 AND lo_user_id <= $2 AND hi_user_id > $2
"""

# Index: delivery_failures_by_device.
DEVICES_FAILURES = """
SELECT device_id, batch_key, platform, outcome, reason, at
FROM delivery_failures
WHERE event_id = $1 AND device_id = ANY($2::bigint[])
ORDER BY at, batch_key
"""

# Index: delivery_batches_finished. Devices per (platform, outcome) in batches recorded in
# the last $1 seconds, across events.
RECENT_OUTCOMES_BY_PLATFORM = """
SELECT p.key AS platform, o.key AS outcome, sum(o.value::bigint)::bigint AS devices
FROM delivery_batches AS b, jsonb_each(b.outcomes) AS p, jsonb_each_text(p.value) AS o
WHERE b.finished_at > now() - make_interval(secs => $1) AND b.outcomes IS NOT NULL
GROUP BY 1, 2
"""

# Index: delivery_failures_at (BRIN). The last $1 seconds' answers other than ok, $2 of them.
RECENT_FAILURES_BY_REASON = """
SELECT platform, outcome, reason, count(*) AS devices
FROM delivery_failures
WHERE at > now() - make_interval(secs => $1)
GROUP BY 1, 2, 3
ORDER BY devices DESC
LIMIT $2
"""

# Indexes: events_due, delivery_batches_open. How long the oldest work has waited for a
# worker: events not yet fanning out, batches recorded queued and not yet claimed.
OLDEST_WAITING = """
SELECT (SELECT min(created_at) FROM events
        WHERE due_at IS NOT NULL AND status IN ('pending', 'enqueued')) AS oldest_event,
       (SELECT min(started_at) FROM delivery_batches
        WHERE status <> 'done' AND status = 'queued') AS oldest_batch,
       now() AS now
"""

# Index: console_sessions_pkey. $3 hours.
INSERT_CONSOLE_SESSION = """
INSERT INTO console_sessions (token_hash, api_key_id, expires_at)
VALUES ($1, $2, now() + make_interval(hours => $3::integer))
"""

# Indexes: console_sessions_pkey, api_keys_pkey. A live session of a live key.
CONSOLE_SESSION_KEY = """
SELECT k.id, k.key_id, k.scopes, k.name
FROM console_sessions AS s
JOIN api_keys AS k ON k.id = s.api_key_id
WHERE s.token_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL
"""

# Index: console_sessions_pkey.
DELETE_CONSOLE_SESSION = "DELETE FROM console_sessions WHERE token_hash = $1"

# Index: console_sessions_expiry. Run at each sign-in.
DELETE_EXPIRED_CONSOLE_SESSIONS = "DELETE FROM console_sessions WHERE expires_at < now()"
