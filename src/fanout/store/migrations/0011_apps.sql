-- fanout schema, version 11: apps and their push credentials (issue #22, first step).
--
-- An app is what one deployment pushes for: a key such as `books-ios`, a name, its own
-- APNs, FCM and Web Push credentials. This migration only adds the two tables and the app
-- `default`; the rows that will belong to an app (users, topics, devices, events, keys)
-- gain their app_id in a later migration, owned by `default` when they exist already.

-- integer, not bigint: hundreds of apps, and the app_id that devices and subscriptions
-- will carry is 4 bytes a row instead of 8 on the largest tables.
CREATE TABLE apps (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Short, URL- and shell-safe; the same rule as store/apps.py's APP_KEY_PATTERN.
    key        text NOT NULL UNIQUE CHECK (key ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name       text NOT NULL,
    -- Per-app switches, e.g. {"allow_critical": true}; none is read yet.
    settings   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One credential per app and provider. The private part (the .p8 key, the service
-- account's JSON, the VAPID private key) is only ever stored sealed: AES-256-GCM under a
-- key-encryption key (FANOUT_SECRET_KEY) with the app id and provider as associated data,
-- so a ciphertext copied to another app's row does not open (credentials/sealing.py).
-- `kek_id` names the key that sealed it (a hash prefix, not the key), so a rotation knows
-- which rows are done. `identity` holds only what identifies the credential and is safe to
-- show: APNs key id, team id, bundle id; FCM project id, client email; the VAPID public
-- key and subject; and a fingerprint (sha256 of the public key).
CREATE TABLE app_credentials (
    app_id     integer NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    provider   text NOT NULL CHECK (provider IN ('apns', 'fcm', 'webpush')),
    sealed     bytea NOT NULL,
    kek_id     text NOT NULL,
    identity   jsonb NOT NULL CHECK (jsonb_typeof(identity) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, provider)
);

-- Every row that exists before apps will belong to this one; the FANOUT_APNS_*, _FCM_*
-- and _VAPID_* settings are its credentials until `fanout apps import-env default`.
INSERT INTO apps (key, name) VALUES ('default', 'default');
