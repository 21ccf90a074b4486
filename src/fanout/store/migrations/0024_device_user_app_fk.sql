-- fanout schema, version 24: a device's user is of the device's app, by one foreign key.
--
-- devices(app_id, user_id) -> users(app_id, id), ON DELETE CASCADE, replaces the two
-- foreign keys devices_user_id_fkey (user_id -> users(id), cascading) and
-- devices_app_id_fkey (app_id -> apps(id)): one per-row trigger on each row a bulk import
-- writes instead of two (the import's upsert spent ~25% of its statement in them,
-- EXPLAIN ANALYZE), and what the API only checked in Python (routes/devices.py: a device
-- only for a user of the same app) is now the database's: a device of another app's user
-- is refused. The app still exists by the composite key (users(app_id) references apps);
-- deleting a user still deletes their devices.
--
-- users_by_app (app_id, id) becomes unique (the key the foreign key references; id alone
-- is the primary key, so it always was), under the same name: the fan-out's pages over an
-- app's users read the same index, as before (recipients.py, shards.py).
--
-- Locking (on a live database): CREATE UNIQUE INDEX takes a SHARE lock on users for the
-- build (one scan and sort of users: a few seconds per million users; reads go on, writes
-- to users wait). The rest is catalogue work, ACCESS EXCLUSIVE on users and devices from
-- the DROPs to the commit, a few milliseconds once granted (lock_timeout: a migration that
-- waits behind a long query gives up, rather than queueing every reader behind it; run
-- it again). The new key is added NOT VALID here, enforced for every row written from now
-- on; schema 25 validates the existing rows in a transaction of its own, under a lock
-- that lets reads and writes go on.
SET LOCAL lock_timeout = '10s';
CREATE UNIQUE INDEX users_app_id_key ON users (app_id, id);
DROP INDEX users_by_app;
ALTER INDEX users_app_id_key RENAME TO users_by_app;
ALTER TABLE devices
    ADD CONSTRAINT devices_app_user_fkey FOREIGN KEY (app_id, user_id)
        REFERENCES users (app_id, id) ON DELETE CASCADE NOT VALID,
    DROP CONSTRAINT devices_user_id_fkey,
    DROP CONSTRAINT devices_app_id_fkey;
