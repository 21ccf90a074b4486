-- fanout schema, version 21: subscribers read from the app's own tables (issue #25).
--
-- A source binds a topic prefix of an app (`author:`) to a read-only query over the app's
-- tables (in this database, or reached through postgres_fdw) returning the subscribing
-- users' external ids, for the rest of the topic's key bound to `:key`. Checked when it is
-- added (store/sources.py: read-only, under a statement timeout, the column named, no
-- sequential scan in its plan).
CREATE TABLE sources (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id      integer NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    prefix      text NOT NULL CHECK (length(prefix) BETWEEN 1 AND 200),
    query       text NOT NULL,
    user_column text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, prefix)
);

-- An event on a sourced topic: the users its source returned when it was planned, mapped
-- to fanout's users of the app (those without a fanout user have no device to reach). The
-- fan-out pages and shards them by user id as it does a topic's subscriptions, so the
-- audience is fixed for the event's life: a page read again after a crash reads the same.
CREATE TABLE event_members (
    event_id bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    user_id  bigint NOT NULL,
    PRIMARY KEY (event_id, user_id)
);

-- The source an event's audience was read from (its prefix, as it was then); NULL: the
-- topic's own subscriptions. Set with the event's members, in the same transaction.
ALTER TABLE events ADD COLUMN source_prefix text;
