"""SQL that several statements share: the device's wire form, the audience and schedule
rules and the recipients' read they make up (the fan-out's page, a 1:1 send, a lost batch
re-read), and the reconciler's claim of overdue work.

Every statement is written beside the one function that runs it, in the module of its
table; only what several of them really share is here."""

from fanout.queue.messages import APNS_SANDBOX, WIRE_FIELDS

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


# A device's platform as batches group it: an APNs sandbox device is in a group of its own.
DEVICE_PLATFORM = f"CASE WHEN d.apns_sandbox THEN '{APNS_SANDBOX}' ELSE d.platform END"

DEVICE_WIRE = f"""
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


def schedule_parameters(first: int) -> dict[str, str]:
    """The schedule's parameters, numbered from ``first``."""
    names = ("zones_in", "zones_not_in", "default_zone", "deferred_wave", "quiet", "now")
    numbered = {name: f"${first + i}" for i, name in enumerate(names)}
    return {**numbered, "recheck": f"${first + len(names)}"}


# Whether a user's tags ``u.tags`` match the event's compiled filter ``fl.f``
# (fanout/tags.compile_filter): the equalities one jsonb containment, each other condition
# one expression on the user's tag. The one definition of the match in SQL, used by the
# audience rule ``filtered`` (one users_pkey probe per subscriber) and by the filtered
# page's ``matched`` (one read of the page's users, ``filtered_recipients_query``).
TAGS_MATCH = """u.tags @> (fl.f -> 'eq') AND NOT EXISTS (
                SELECT 1 FROM jsonb_array_elements(fl.f -> 'conds') AS c
                WHERE NOT coalesce(CASE c ->> 'op'
                    WHEN 'exists' THEN (u.tags ? (c ->> 'key')) = (c -> 'value')::boolean
                    WHEN 'in' THEN (c -> 'value') @> jsonb_build_array(u.tags -> (c ->> 'key'))
                    ELSE jsonb_typeof(u.tags -> (c ->> 'key')) = 'number' AND CASE c ->> 'op'
                        WHEN 'gt' THEN (u.tags ->> (c ->> 'key'))::numeric
                                       > (c ->> 'value')::numeric
                        WHEN 'gte' THEN (u.tags ->> (c ->> 'key'))::numeric
                                        >= (c ->> 'value')::numeric
                        WHEN 'lt' THEN (u.tags ->> (c ->> 'key'))::numeric
                                       < (c ->> 'value')::numeric
                        WHEN 'lte' THEN (u.tags ->> (c ->> 'key'))::numeric
                                        <= (c ->> 'value')::numeric
                    END END, false))"""


# Audience rules (issue #13): who of the subscribers read is held back on purpose, and
# why. The first rule that holds names the reason, so a user both opted out and capped is
# counted once, as opted_out. Each rule is a condition on the subscriber ``sub.user_id``
# and their preferences ``p`` (a user_preferences row, all NULL when they have none), with
# the statement's parameters for the event's topic, id and category written {topic},
# {event}, {category}. Another rule (quiet hours) goes beside these, in the order its
# reason should win. A held-back user comes back as one row with NULL device columns and
# its reason, so the cursor moves past them and the shard counts them at its checkpoint.

AUDIENCE_RULES: tuple[tuple[str, str], ...] = (
    # The event's tag filter (issue #25, compiled by fanout/tags.compile_filter): a user
    # whose tags do not match is not of the audience, counted as filtered. Equalities are
    # one jsonb containment, the other operators one condition each on the user's tag. For
    # an event without a filter the CASE stops at the ``filt`` row (read once per
    # statement): no probe. With one: users_pkey, one probe per subscriber.
    (
        "filtered",
        f"""CASE WHEN (SELECT f FROM filt) IS NULL THEN false ELSE NOT (
            SELECT {TAGS_MATCH}
            FROM users AS u, filt AS fl WHERE u.id = sub.user_id) END""",
    ),
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

# The frequency caps of the event's app that apply to its category: '*' and its own (a
# few rows, read once per statement; the app is one probe of events_pkey, so the page
# gains no join).
_CAPS = """caps AS MATERIALIZED (
    SELECT category, max_sends, window_seconds FROM frequency_caps
    WHERE app_id = (SELECT e.app_id FROM events AS e WHERE e.id = {event}::bigint)
      AND (category = '*' OR category = {category}::text)
), filt AS MATERIALIZED (
    SELECT e.tag_filter AS f FROM events AS e WHERE e.id = {event}::bigint
)"""


def _held_back_reason(rules: tuple[tuple[str, str], ...], **parameters: str) -> str:
    whens = "\n".join(
        f"        WHEN {rule.format(**parameters)} THEN '{reason}'"
        for reason, rule in (*rules, *SCHEDULE_RULES)
    )
    return f"CASE\n{whens}\n    END"


def _recipients_rows(audience: str, rules: tuple[tuple[str, str], ...], **parameters: str) -> str:
    """The rows of ``recipients_query`` for ``audience`` (a query of ``sub.user_id``) under
    ``rules``, unordered, without the CTEs they read (``caps``, ``filt``)."""
    release_at = _QUIET_WINDOW_END.replace("{prefs}", "s").format(**parameters)
    return f"""
SELECT s.user_id, d.platform, d.wire, d.held_back,
       CASE WHEN d.held_back = 'deferred' THEN {release_at} END AS release_at
FROM (
    SELECT sub.user_id, {_held_back_reason(rules, **parameters)} AS held_back,
           p.time_zone, p.quiet_end
    FROM ({audience}) AS sub
    LEFT JOIN LATERAL (
        SELECT * FROM user_preferences AS up WHERE up.user_id = sub.user_id OFFSET 0
    ) AS p ON true
    OFFSET 0
) AS s
LEFT JOIN LATERAL (
    SELECT {DEVICE_PLATFORM} AS platform, {DEVICE_WIRE} AS wire, NULL::text AS held_back
    FROM devices AS d
    WHERE s.held_back IS NULL AND d.user_id = s.user_id AND d.active
    UNION ALL
    (SELECT NULL, NULL, s.held_back
     FROM devices AS h
     WHERE s.held_back IS NOT NULL AND h.user_id = s.user_id AND h.active
     LIMIT 1)
) AS d ON true"""


def recipients_query(subscribers: str, **parameters: str) -> str:
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
    return f"""
WITH {_CAPS.format(**parameters)}
{_recipients_rows(audience, AUDIENCE_RULES, **parameters)}
ORDER BY s.user_id
"""


# A window is read through the users table in one range (the users with ids from its first
# subscriber to its last: a bitmap or index range scan of users_pkey, each heap page once)
# when that range holds at most this many users per subscriber of the window; a sparser
# window probes users_pkey per subscriber. Measured (EXPLAIN ANALYZE, a window of 5,000 of
# a topic's 100,000 subscribers spanning 6,666 user ids): the range read 2-17 ms, the probes
# 28-30 ms (5.4 buffers each); a probe costs about what ten users of a range cost.
_DENSE_USERS_PER_SUBSCRIBER = 8


def filtered_recipients_query(subscribers: str, **parameters: str) -> str:
    """``recipients_query`` for an event with a tag filter (issue #25): the same rows, the
    same page of ``subscribers`` (its LIMIT still counts every subscriber, so the cursor,
    the page's end and the checkpoints are what they are unfiltered), but the filter is
    decided for the whole page at once and only the users it matches go through the other
    rules and their devices.

    ``win``: the page's subscribers. ``matched``: those of them whose tags match
    (``TAGS_MATCH``), read in one range of users when the window is dense
    (``_DENSE_USERS_PER_SUBSCRIBER``; only ``win``'s own users are kept, so no other
    app's user can enter), else by one users_pkey probe each; the density is known only
    once the window is read, so both reads are planned and a one-time filter runs one.
    ``tagged``: each of ``win``'s users once, with whether matched, by grouping the two
    (a join of ``win`` to ``matched`` was planned, under the generic plan PostgreSQL takes
    after five executions of a prepared statement, as a nested loop over ``matched`` for
    each subscriber, its window estimated at one row: 1.9 s a page instead of 52 ms;
    grouping has no such plan). A range read's users not in ``win`` are dropped there.
    A subscriber not matched comes back as one row ``filtered`` if they have an active
    device (dense: one range read of devices_active_by_user, grouped in ``tagged``;
    sparse: a probe of it, LIMIT 1), else one row of NULLs, exactly as
    the audience rule ``filtered`` has them: no preferences, mutes or caps are read for
    them, and no rule is evaluated. Measured with EXPLAIN (ANALYZE) on a page of 5,000 of
    100,000 subscribers (30% matching), see docs/architecture.md (Tags).
    """
    window = subscribers.format(wave_members=_WAVE_MEMBERS.format(**parameters))
    dense = _DENSE_USERS_PER_SUBSCRIBER
    return f"""
WITH {_CAPS.format(**parameters)}, win AS MATERIALIZED (
    {window}
), span AS MATERIALIZED (
    SELECT min(user_id) AS first, max(user_id) AS last,
           max(user_id) - min(user_id) < {dense} * count(*) AS dense
    FROM win
), matched AS MATERIALIZED (
    SELECT u.id AS user_id FROM users AS u, filt AS fl
    WHERE (SELECT dense FROM span)
      AND u.id BETWEEN (SELECT first FROM span) AND (SELECT last FROM span)
      AND (fl.f IS NULL OR {TAGS_MATCH})
    UNION ALL
    SELECT w.user_id FROM win AS w
    WHERE NOT (SELECT dense FROM span) AND EXISTS (
        SELECT 1 FROM users AS u, filt AS fl
        WHERE u.id = w.user_id AND (fl.f IS NULL OR {TAGS_MATCH}))
), tagged AS MATERIALIZED (
    SELECT x.user_id, bool_or(x.matched) AS matched, bool_or(x.device) AS device
    FROM (SELECT user_id, true AS in_win, false AS matched,
                 CASE WHEN (SELECT dense FROM span) THEN false END AS device
          FROM win
          UNION ALL
          SELECT user_id, false, true, NULL FROM matched
          UNION ALL
          SELECT d.user_id, false, false, true FROM devices AS d
          WHERE (SELECT dense FROM span) AND d.active
            AND d.user_id BETWEEN (SELECT first FROM span) AND (SELECT last FROM span)) AS x
    GROUP BY x.user_id
    HAVING bool_or(x.in_win)
)
SELECT m.*, NULL::bigint AS users, NULL::bigint AS held
FROM ({
        _recipients_rows(
            "SELECT t.user_id FROM tagged AS t WHERE t.matched",
            AUDIENCE_RULES[1:],
            **parameters,
        )
    }) AS m
UNION ALL
SELECT max(o.user_id), NULL, NULL, CASE WHEN bool_or(o.device) THEN 'filtered' END, NULL,
       count(*), count(*) FILTER (WHERE o.device)
FROM (
    SELECT t.user_id, t.matched, coalesce(t.device, h.device, false) AS device,
           count(*) FILTER (WHERE t.matched) OVER (ORDER BY t.user_id) AS run
    FROM tagged AS t
    LEFT JOIN LATERAL (
        SELECT true AS device FROM devices AS h
        WHERE t.device IS NULL AND NOT t.matched AND h.user_id = t.user_id AND h.active
        LIMIT 1
    ) AS h ON true
) AS o
WHERE NOT o.matched
GROUP BY o.run
ORDER BY 1
"""


assert AUDIENCE_RULES[0][0] == "filtered"  # filtered_recipients_query decides it first


# superseded: a Live Activity update ({e}) with a newer update or end of the same activity
# published that will itself go out (not cancelled, expired or failed: one that will not
# must not leave the devices on an older state than this): the device keeps the newest (by
# aps.timestamp), so what this one has not yet reached is skipped. A start never is: it
# goes to other tokens (push-to-start). Index: events_by_live_activity, one probe; never
# reached for an event of a topic or a user.
SUPERSEDED = """CASE WHEN {e}.live_activity_id IS NULL THEN false
         WHEN {e}.notification -> 'live_activity' ->> 'event' <> 'update' THEN false
         ELSE EXISTS (
             SELECT 1 FROM events AS newer
             WHERE newer.live_activity_id = {e}.live_activity_id AND newer.id > {e}.id
               AND newer.notification -> 'live_activity' ->> 'event' IN ('update', 'end')
               AND newer.cancelled_at IS NULL
               AND newer.status NOT IN ('failed', 'cancelled', 'expired')
               AND (newer.expires_at IS NULL OR newer.expires_at > now()))
    END"""

# Why an event's work stops, read by the statement that claims or checkpoints a unit of it
# (events_pkey, one probe): 'cancelled', 'expired', 'superseded' (the held-back reason its
# devices are counted under), or NULL. $1 is the event.
# The same of the events row {e} (a statement about many units: CLAIM_BATCHES).
STOPPED = (
    """CASE WHEN {e}.cancelled_at IS NOT NULL THEN 'cancelled'
         WHEN {e}.expires_at <= now() THEN 'expired'
         WHEN """
    + SUPERSEDED
    + """ THEN 'superseded' END"""
)
EVENT_STOPPED = f"""(SELECT {STOPPED.format(e="e")}
           FROM events AS e WHERE e.id = $1) AS stopped"""


# The reconciler's claim of overdue work, one shape for its three tables (events, shards,
# batches): every row past its due_at, taken by moving due_at on (doubling per resend, so
# a unit that is only slow is not resent in a loop), and SKIP LOCKED so that the
# reconcilers of many workers share the work rather than repeat it. $1: how many; $2: the
# base delay (FANOUT_RECONCILE_AFTER); $3: seconds to look ahead (0; tests use it to act
# "later" without waiting); $4: one event only, or NULL for all. Each table's index on
# due_at (events_due, fanout_shards_due, delivery_batches_due) serves it.
def claim_due(*, table: str, key: tuple[str, ...], event: str, returning: tuple[str, ...]) -> str:
    """The claim of ``table``'s overdue rows (primary key ``key``, the event's id in column
    ``event``), returning the columns ``returning``."""
    return f"""
UPDATE {table} AS u
SET due_at = now() + make_interval(secs => $2 * 2 ^ least(resends, 10)), resends = u.resends + 1
FROM (
    SELECT {", ".join(key)} FROM {table}
    WHERE due_at < now() + make_interval(secs => $3)
      AND ($4::bigint IS NULL OR {event} = $4)
    ORDER BY due_at LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due
WHERE {" AND ".join(f"u.{k} = due.{k}" for k in key)}
RETURNING {", ".join(f"u.{c}" for c in returning)}
"""


# The outbox rows reporting an event's end (issue #24): one ``event.finished`` delivery per
# endpoint of the event's app that wants the kind, written by the statement that ends the
# event (lifecycle's FINISH_EVENT, CANCEL_EVENT, FAIL_EVENT), so the report commits with
# the fact. {ended}: that statement's CTE of the ended events (id, app_id, status,
# finished_at); {condition}: which of its rows ended here. An endpoint disabled gets its
# row too, as failed: a replay sends it. Index: webhook_endpoints_by_app; the counts are
# summed (delivery_batches_pkey, the event's batches) only when an endpoint wants them.
EVENT_FINISHED_WEBHOOKS = """webhooks AS (
    INSERT INTO webhook_deliveries (endpoint_id, app_id, kind, payload, status, last_answer)
    SELECT w.id, f.app_id, 'event.finished',
           jsonb_build_object(
               'event_id', f.id, 'status', f.status, 'finished_at', f.finished_at,
               'sent', c.sent, 'failed', c.failed, 'invalid', c.invalid,
               'skipped', c.skipped),
           CASE WHEN w.disabled_at IS NULL THEN 'pending' ELSE 'failed' END,
           CASE WHEN w.disabled_at IS NOT NULL THEN 'endpoint disabled' END
    FROM {ended} AS f
    JOIN webhook_endpoints AS w
      ON w.app_id = f.app_id AND 'event.finished' = ANY(w.kinds)
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(b.sent), 0) AS sent, coalesce(sum(b.failed), 0) AS failed,
               coalesce(sum(b.invalid), 0) AS invalid, coalesce(sum(b.skipped), 0) AS skipped
        FROM delivery_batches AS b WHERE b.event_id = f.id AND b.status = 'done'
    ) AS c
    WHERE {condition}
)"""
