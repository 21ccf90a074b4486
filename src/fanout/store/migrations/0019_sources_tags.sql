-- fanout schema, version 19: users' tags and the tag filter an event carries (issue #25).
--
-- A user's tags: a flat map of string, number or boolean values (bounded by the API:
-- fanout/tags.py). The fan-out reads them by users_pkey, per subscriber, only for an event
-- with a filter; the GIN index (jsonb_path_ops: containment only, a third of the size of
-- the default opclass) serves the `tags @> {...}` of the equalities, for queries that start
-- from the tags rather than from a topic's subscribers.
ALTER TABLE users ADD COLUMN tags jsonb NOT NULL DEFAULT '{}';
CREATE INDEX users_tags ON users USING gin (tags jsonb_path_ops);

-- The filter of an event, compiled (fanout/tags.compile_filter): {"eq": {...}, "conds":
-- [...]}; NULL: everyone. Read once per page statement (events_pkey).
ALTER TABLE events ADD COLUMN tag_filter jsonb;
