-- fanout schema, version 13: iOS Live Activities (issue 23).
--
-- An activity is the app's own id for one Live Activity (a match, a delivery). Its
-- audience is the APNs tokens registered for it, not a topic's subscribers: the activity's
-- push tokens ('activity', which update and end it) and push-to-start tokens
-- ('push_to_start', which a start goes to). An update is an event like any other, fanned
-- out over these tokens in token-id order, as a topic's are in user-id order.
CREATE TABLE live_activities (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    activity_key   text NOT NULL UNIQUE,
    -- The last update's aps.timestamp (UNIX seconds): each update's is greater, so the
    -- device, which keeps the newest, keeps the last one published.
    last_timestamp bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE live_activity_tokens (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    activity_id    bigint NOT NULL REFERENCES live_activities (id) ON DELETE CASCADE,
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('activity', 'push_to_start')),
    token          text NOT NULL CHECK (length(token) BETWEEN 1 AND 4096),
    topic_id       bigint REFERENCES topics (id) ON DELETE SET NULL,
    -- false once APNs answers that the token is dead (as devices.active).
    active         boolean NOT NULL DEFAULT true,
    -- Set by an end: the token gets no update published after it (its dismissal date, or
    -- the end's own time when it has none).
    ends_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz,
    retired_reason text,
    UNIQUE (activity_id, kind, token)
);
-- The fan-out's keyset page and shard bounds over one activity's tokens of one kind.
CREATE INDEX live_activity_tokens_audience ON live_activity_tokens (activity_id, kind, id)
    WHERE active;
CREATE INDEX live_activity_tokens_by_user ON live_activity_tokens (user_id);

-- An event goes to a topic, a user, or a Live Activity's tokens.
ALTER TABLE events ADD COLUMN live_activity_id bigint
    REFERENCES live_activities (id) ON DELETE CASCADE;
ALTER TABLE events DROP CONSTRAINT events_check;
ALTER TABLE events ADD CONSTRAINT events_one_audience
    CHECK (num_nonnulls(topic_id, user_id, live_activity_id) = 1);
-- An activity's updates in order: whether a newer one supersedes this one, and the
-- priority-10 updates of its last hour.
CREATE INDEX events_by_live_activity ON events (live_activity_id, id)
    WHERE live_activity_id IS NOT NULL;
