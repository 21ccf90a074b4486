-- fanout schema, version 8: topic mutes and frequency caps (issue #13). The per-user
-- preferences (time zone, quiet hours, opt-outs) are in user_preferences (version 5).
--
-- A user's mute of one topic; until NULL: until unmuted. Probed by the fan-out's page
-- query per subscriber by its primary key (user_id, topic_id).
CREATE TABLE topic_mutes (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    topic_id   bigint NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    until      timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, topic_id)
);

-- At most max_sends pushes per user in any window_seconds; category '*' caps every push,
-- any other caps the notifications of that category. A handful of rows.
CREATE TABLE frequency_caps (
    category       text PRIMARY KEY,
    max_sends      integer NOT NULL CHECK (max_sends > 0),
    window_seconds integer NOT NULL CHECK (window_seconds > 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The pushes that count toward the caps: one row per user fanned out into a batch the
-- delivery queue accepted, appended by the shard's checkpoint (one INSERT ... SELECT
-- unnest per page, only while some cap applies to the event's category). No foreign
-- keys: it is append-only on the fan-out's path, and rows older than the longest window
-- are pruned by the reconciler (user_sends_by_time).
CREATE TABLE user_sends (
    user_id  bigint NOT NULL,
    event_id bigint NOT NULL,
    category text,
    sent_at  timestamptz NOT NULL DEFAULT now()
);
-- The page query counts a subscriber's recent sends: an index-only range scan.
CREATE INDEX user_sends_by_user ON user_sends (user_id, sent_at) INCLUDE (category, event_id);
-- Rows arrive in time order: a BRIN index finds the old ones to prune for a few pages.
CREATE INDEX user_sends_by_time ON user_sends USING brin (sent_at);
