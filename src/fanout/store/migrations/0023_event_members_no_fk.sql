-- fanout schema, version 23: event_members without its foreign key to events.
--
-- Reading a sourced event's members is one INSERT … SELECT of every follower; the foreign
-- key's check ran once per row and was half of it (EXPLAIN ANALYZE, 100,000 members: 1.5 s,
-- of which 0.65-0.8 s in the trigger of event_members_event_id_fkey). The rows are only
-- ever written by the planning of their event, under its lock (the event exists), and
-- fanout deletes no event; an event deleted by hand leaves rows nothing reads.
ALTER TABLE event_members DROP CONSTRAINT event_members_event_id_fkey;
