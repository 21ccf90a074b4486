-- fanout schema, version 10: what the operator console (issue #15) reads and needs.

-- Per device, only what went wrong: one row for each device a batch did not send to (a
-- dead token, a permanent failure, a retry, no provider for its platform), written with
-- the batch's outcome in one INSERT per batch. No row is ever written for a device that
-- was sent to: a device of a done batch without a row here was sent to (the console's
-- "Where is my push?"). `reason` is the provider's answer as the provider module put it.
-- No foreign key to devices: a device deleted later keeps its history, and an insert
-- takes no lock on the devices it names.
CREATE TABLE delivery_failures (
    event_id  bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    batch_key text NOT NULL,
    device_id bigint NOT NULL,
    platform  text NOT NULL,
    outcome   text NOT NULL CHECK (outcome IN ('invalid', 'failed', 'retried', 'held', 'skipped')),
    reason    text,
    at        timestamptz NOT NULL DEFAULT now()
);
-- One device's story in one event; and the event's failures by outcome and reason.
CREATE INDEX delivery_failures_by_device ON delivery_failures (event_id, device_id);
-- The last minute's failures across events (rows arrive in time order: BRIN is enough).
CREATE INDEX delivery_failures_at ON delivery_failures USING brin (at);

-- A batch's outcomes per platform: {"apns": {"sent": 812, "invalid": 3}, "fcm": {...}}.
ALTER TABLE delivery_batches ADD COLUMN outcomes jsonb;
-- The last minute's sends per platform.
CREATE INDEX delivery_batches_finished ON delivery_batches (finished_at)
    WHERE finished_at IS NOT NULL;

-- The console's list of a topic's events, newest first.
CREATE INDEX events_by_topic ON events (topic_id, id);

-- Console sign-ins: the cookie holds a random token, this table only its sha256, so a
-- copy of the table signs nobody in. Any API worker can read it; revoking the API key
-- ends its sessions (the key is joined on every request).
CREATE TABLE console_sessions (
    token_hash bytea PRIMARY KEY,
    api_key_id bigint NOT NULL REFERENCES api_keys (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
