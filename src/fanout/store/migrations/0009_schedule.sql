-- fanout schema, version 9: events held in PostgreSQL until their time (issue #13).
--
-- An event may wait before its fan-out (send_at), go out in waves as each recipient's time
-- zone reaches a local time (deliver_at_local), hold a recipient inside their quiet hours
-- until the window ends (quiet_hours = 'defer'), stop sending at expires_at, or be
-- cancelled. Every wait longer than SQS's 15-minute DelaySeconds is a row with a time here,
-- released by the reconciler's due scan: nothing sleeps.

-- scheduled: waiting for send_at (or its first wave), due_at = that time.
-- cancelled, expired: terminal, with what was sent before in the counters.
ALTER TABLE events DROP CONSTRAINT events_status_check;
ALTER TABLE events ADD CONSTRAINT events_status_check CHECK (status IN (
    'scheduled', 'pending', 'enqueued', 'fanning_out', 'fanned_out',
    'delivered', 'partially_delivered', 'failed', 'no_recipients', 'cancelled', 'expired'));
ALTER TABLE events
    ADD COLUMN send_at          timestamptz,
    ADD COLUMN deliver_at_local time,
    ADD COLUMN quiet_hours      text NOT NULL DEFAULT 'defer'
                                CHECK (quiet_hours IN ('defer', 'drop', 'ignore')),
    ADD COLUMN expires_at       timestamptz,
    ADD COLUMN cancelled_at     timestamptz;

-- One release of an event's audience. kind 'local': the subscribers whose time zone is in
-- `zones` (or, with catch_all, in none of the other local waves' zones: users without a
-- time zone, in the default zone's wave), released at release_at. kind 'deferred': the
-- recipients deferred_recipients assigns to this wave (their quiet hours ended). Its shards
-- carry its wave_no. held -> planned (shards written) or dropped (cancelled/expired first).
CREATE TABLE event_waves (
    event_id   bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    wave_no    integer NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('local', 'deferred')),
    release_at timestamptz NOT NULL,
    zones      text[] NOT NULL DEFAULT '{}',
    catch_all  boolean NOT NULL DEFAULT false,
    status     text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'planned', 'dropped')),
    PRIMARY KEY (event_id, wave_no)
);
-- "Which of this event's waves are due?", asked when the event is planned again.
CREATE INDEX event_waves_held ON event_waves (event_id, release_at) WHERE status = 'held';

-- A recipient inside their quiet hours at fan-out, with the time their window ends. wave_no
-- is set when a deferred wave takes them (NULL: still waiting; -1: dropped by a cancel or
-- the event's expiry). Written by the fan-out's page query, one INSERT per page.
CREATE TABLE deferred_recipients (
    event_id   bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL,
    release_at timestamptz NOT NULL,
    wave_no    integer,
    PRIMARY KEY (event_id, user_id)
);
CREATE INDEX deferred_recipients_waiting ON deferred_recipients (event_id, release_at)
    WHERE wave_no IS NULL;
CREATE INDEX deferred_recipients_by_wave ON deferred_recipients (event_id, wave_no, user_id);

-- The wave a shard fans out (NULL: the whole audience, as before).
ALTER TABLE fanout_shards ADD COLUMN wave_no integer;
