-- Idempotency keys as payment APIs have them: scoped to the API key that sent them, and
-- bound to the request they were first sent with.

ALTER TABLE events
    -- The API key that published the event; NULL for the CLI and other internal callers,
    -- which share one scope of their own. No foreign key: every publish would then lock
    -- its key's row (FOR KEY SHARE), one hot row turned multixact under concurrent
    -- publishing; keys are revoked, never deleted, so the id keeps its meaning.
    ADD COLUMN api_key_id bigint,
    -- sha256 of the request's canonical JSON (stages/publish.py), kept only with an
    -- idempotency key. NULL on events from before this migration: a repeat of their key
    -- counts as the same request.
    ADD COLUMN request_fingerprint bytea;

-- One event per (idempotency key, API key). NULLS NOT DISTINCT (PostgreSQL 15): the
-- internal scope, NULL, is one scope, not one per event. The key leads, so the look-up
-- after a conflict finds the few rows that share it.
ALTER TABLE events DROP CONSTRAINT events_idempotency_key_key;
CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key, api_key_id)
    NULLS NOT DISTINCT WHERE idempotency_key IS NOT NULL;
