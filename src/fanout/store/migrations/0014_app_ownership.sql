-- fanout schema, version 14: every row belongs to an app (issue #22, second step).
--
-- Users, topics, devices, events, API keys, frequency caps and Live Activities gain
-- app_id; what belongs to those follows them (subscriptions, preferences and mutes: their
-- user and topic; shards, batches, waves, failures: their event; console sessions: their
-- key; a Live Activity's tokens: their activity). Every
-- existing row goes to the app `default` (migration 11). Uniqueness becomes per app: the
-- same external user id, topic key, device token, cap category, activity id or
-- idempotency key in two apps are two things.
--
-- ADD COLUMN with a constant DEFAULT and NOT NULL is a catalogue change in PostgreSQL 11+
-- (no table rewrite, whatever the size); the default is then dropped, so that every insert
-- names its app and a forgotten one fails instead of landing in `default`. The foreign keys
-- are added NOT VALID and validated after: one scan per table, never a rewrite. The new
-- unique indexes are built here, in the migration's transaction (a scan and sort each:
-- on ~10 M devices, tens of seconds during which writes to that table wait).
--
-- The fan-out's page query does not change: it reads subscriptions of one topic (which
-- belongs to one app) and the devices of those users, both by their own indexes.

DO $$
DECLARE
    default_app integer := (SELECT id FROM apps WHERE key = 'default');
    owned text;
BEGIN
    FOREACH owned IN ARRAY ARRAY['users', 'topics', 'devices', 'events', 'api_keys',
                                 'frequency_caps', 'live_activities']
    LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN app_id integer NOT NULL DEFAULT %s',
                       owned, default_app);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN app_id DROP DEFAULT', owned);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (app_id) '
                       'REFERENCES apps (id) NOT VALID', owned, owned || '_app_id_fkey');
        EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', owned, owned || '_app_id_fkey');
    END LOOP;
END
$$;

-- A user by their external id, a topic by its key: within their app.
ALTER TABLE users DROP CONSTRAINT users_external_id_key;
ALTER TABLE users ADD CONSTRAINT users_app_external_id_key UNIQUE (app_id, external_id);
ALTER TABLE topics DROP CONSTRAINT topics_key_key;
ALTER TABLE topics ADD CONSTRAINT topics_app_key_key UNIQUE (app_id, key);
-- A Live Activity by the app's own id for it (its tokens and updates follow the activity:
-- an update's event is of the activity's app, the token's user too; routes and
-- stages/live_activity.py take both from the key).
ALTER TABLE live_activities DROP CONSTRAINT live_activities_activity_key_key;
ALTER TABLE live_activities ADD CONSTRAINT live_activities_app_activity_key_key
    UNIQUE (app_id, activity_key);

-- A token registered in app B is another device than the same token in app A (it never
-- moves A's device to B's user). A device's app is its user's: the API registers a
-- device only for a user of the same app (routes/devices.py).
ALTER TABLE devices DROP CONSTRAINT devices_platform_token_key;
ALTER TABLE devices ADD CONSTRAINT devices_app_platform_token_key
    UNIQUE (app_id, platform, token);

-- Idempotency keys: an API key's own (an API key belongs to one app), and for internal
-- callers (api_key_id NULL) one scope per app instead of one for the deployment.
DROP INDEX events_idempotency_key;
CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key, app_id, api_key_id)
    NULLS NOT DISTINCT WHERE idempotency_key IS NOT NULL;
-- The console's list of an app's events, newest first.
CREATE INDEX events_by_app ON events (app_id, id);

-- A cap per category per app.
ALTER TABLE frequency_caps DROP CONSTRAINT frequency_caps_pkey;
ALTER TABLE frequency_caps ADD PRIMARY KEY (app_id, category);

-- An admin key manages apps, their credentials and their keys, and nothing else.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (scopes <@ ARRAY['publish', 'manage', 'read', 'admin']::text[]);
