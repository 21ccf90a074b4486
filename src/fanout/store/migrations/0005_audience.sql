-- fanout schema, version 5: what the audience controls (issue #13) build on.
--
-- A user's delivery preferences. No row, or NULL columns, mean the defaults: no time
-- zone (quiet hours do not apply), no quiet hours, nothing opted out.
CREATE TABLE user_preferences (
    user_id              bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    time_zone            text,        -- an IANA name, checked by the API ('Europe/Berlin')
    quiet_start          time,        -- a local window; may cross midnight (22:00-08:00)
    quiet_end            time,
    opted_out            boolean NOT NULL DEFAULT false,
    opted_out_categories text[] NOT NULL DEFAULT '{}',
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);

-- Recipients and devices an event did not send to on purpose, by reason: {"capped": 3,
-- "opted_out": 12, ...}. Shards count the recipients the fan-out filtered out (their
-- devices never enter a batch); batches count devices held back at delivery (expired,
-- cancelled). The event's status sums both (EVENT_PROGRESS).
ALTER TABLE fanout_shards ADD COLUMN held_back jsonb NOT NULL DEFAULT '{}';
ALTER TABLE delivery_batches ADD COLUMN held_back jsonb NOT NULL DEFAULT '{}';
