-- API keys: only a hash of the secret part is stored; the key is shown once, at creation.
CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id      text NOT NULL UNIQUE,          -- the public part, to find the row
    secret_hash bytea NOT NULL,                -- sha256 of the 256-bit random secret
    scopes      text[] NOT NULL CHECK (scopes <@ ARRAY['publish', 'manage', 'read']::text[]),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- A user's devices, listed and upserted by the API.
CREATE INDEX devices_by_user ON devices (user_id);
