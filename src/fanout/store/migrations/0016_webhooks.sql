-- fanout schema, version 16: outcome webhooks (issue #24, point 1).
--
-- An app registers endpoints with the kinds of facts it wants. Every call fanout makes is
-- first a row of webhook_deliveries (an outbox), written in the same transaction as the
-- fact it reports (an event ending, a batch's dead tokens): a crash between the fact and
-- the call loses nothing, and the sender retries a row until its endpoint answers 2xx.
CREATE TABLE webhook_endpoints (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id         integer NOT NULL REFERENCES apps (id),
    url            text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    kinds          text[] NOT NULL CHECK (cardinality(kinds) > 0),
    -- The signing secret (the whsec_ text), sealed under FANOUT_SECRET_KEY with the app id
    -- as associated data (credentials/sealing.py), and the id of the key that sealed it.
    secret_sealed  bytea NOT NULL,
    kek_id         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Set when its calls have failed for FANOUT_WEBHOOK_DISABLE_AFTER_HOURS in a row: no
    -- row is sent to it until a replay enables it again.
    disabled_at    timestamptz,
    -- The first failure since its last success (NULL: its last call succeeded).
    failing_since  timestamptz
);
-- An app's endpoints for a kind: the outbox's INSERT … SELECT, the API's list.
CREATE INDEX webhook_endpoints_by_app ON webhook_endpoints (app_id, id);

CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     bigint NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    app_id          integer NOT NULL REFERENCES apps (id),
    kind            text NOT NULL,
    payload         jsonb NOT NULL,
    -- The Standard Webhooks message id: the same on every try and replay, so a receiver
    -- drops repeats by it.
    webhook_id      text NOT NULL DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    -- Due then; a claim moves it on by its lease, so a sender that dies mid-call leaves
    -- the row due again once the lease is over.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner     uuid,
    -- Retries stop FANOUT_WEBHOOK_RETRY_HOURS after this (its creation, or its replay).
    window_start    timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_answer     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
-- The sender's claim: the pending rows due, oldest first.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- An endpoint's recent deliveries (the console, the API) and its failed ones (a replay).
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);
