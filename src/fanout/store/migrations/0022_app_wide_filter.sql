-- fanout schema, version 22: an event to every user of its app its tag filter matches
-- (issue #25, a publish with `filter` and no topic).
--
-- Such an event has no topic, user or Live Activity: its audience is the app's users,
-- paged by id with the filter as the audience rule `filtered`. Any other event still goes
-- to exactly one of them.
ALTER TABLE events DROP CONSTRAINT events_one_audience;
ALTER TABLE events ADD CONSTRAINT events_one_audience CHECK (
    num_nonnulls(topic_id, user_id, live_activity_id) = 1
    OR (num_nonnulls(topic_id, user_id, live_activity_id) = 0 AND tag_filter IS NOT NULL));

-- The fan-out's keyset page and shard bounds over an app's users (index-only: id > cursor).
CREATE INDEX users_by_app ON users (app_id, id);
