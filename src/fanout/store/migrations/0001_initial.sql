-- fanout schema, version 1.

-- The app's users, by the app's own id; fanout keys everything on the bigint.
CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Anything one can follow: 'author:42', 'series:dune'.
CREATE TABLE topics (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key        text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The primary key (topic_id, user_id) is what fan-out reads: an index-only range
-- scan in user order, which is both the keyset page and the shard boundary.
CREATE TABLE subscriptions (
    topic_id   bigint NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic_id, user_id)
);
-- A user's own subscriptions, and the cascade when a user is deleted.
CREATE INDEX subscriptions_by_user ON subscriptions (user_id, topic_id);

CREATE TABLE devices (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id            bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform           text NOT NULL CHECK (platform IN ('apns', 'fcm', 'webpush')),
    -- APNs device token, FCM registration token, or a Web Push subscription's endpoint.
    token              text NOT NULL CHECK (length(token) BETWEEN 1 AND 4096),
    web_push_p256dh    text,
    web_push_auth      text,
    locale             text,
    active             boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deactivated_at     timestamptz,
    deactivated_reason text,
    UNIQUE (platform, token),
    CHECK ((platform = 'webpush') = (web_push_p256dh IS NOT NULL AND web_push_auth IS NOT NULL))
);
-- Fan-out joins each subscriber to their active devices through this.
CREATE INDEX devices_active_by_user ON devices (user_id) WHERE active;

-- One published notification: to a topic's subscribers, or to one user (1:1 send).
CREATE TABLE events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic_id        bigint REFERENCES topics (id) ON DELETE CASCADE,
    user_id         bigint REFERENCES users (id) ON DELETE CASCADE,
    idempotency_key text UNIQUE,
    notification    jsonb NOT NULL,
    -- pending: committed, fan-out message not yet sent (the outbox sweeper re-sends it)
    -- enqueued -> fanning_out -> fanned_out: every shard has handed its batches to SQS
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'enqueued', 'fanning_out', 'fanned_out')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    enqueued_at     timestamptz,
    fanned_out_at   timestamptz,
    CHECK ((topic_id IS NULL) <> (user_id IS NULL))
);
-- The outbox sweeper's scan.
CREATE INDEX events_pending ON events (created_at) WHERE status = 'pending';

-- A fan-out shard: the subscribers of one event's topic with lo <= user_id < hi.
CREATE TABLE fanout_shards (
    event_id       bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    shard_no       integer NOT NULL,
    lo_user_id     bigint NOT NULL,
    hi_user_id     bigint NOT NULL,
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done')),
    -- Checkpoint: every device of users <= cursor_user_id is in a batch SQS accepted.
    cursor_user_id bigint,
    lease_until    timestamptz,
    attempts       integer NOT NULL DEFAULT 0,
    recipients     bigint NOT NULL DEFAULT 0,
    devices        bigint NOT NULL DEFAULT 0,
    batches        integer NOT NULL DEFAULT 0,
    finished_at    timestamptz,
    PRIMARY KEY (event_id, shard_no)
);

-- One delivery batch's outcome. A row that is 'done' makes a redelivered copy a no-op.
CREATE TABLE delivery_batches (
    event_id    bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    batch_key   text NOT NULL,
    attempt     integer NOT NULL,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done')),
    lease_until timestamptz,
    devices     integer NOT NULL DEFAULT 0,
    sent        integer NOT NULL DEFAULT 0,
    failed      integer NOT NULL DEFAULT 0,
    invalid     integer NOT NULL DEFAULT 0,
    skipped     integer NOT NULL DEFAULT 0,
    retried     integer NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (event_id, batch_key)
);
