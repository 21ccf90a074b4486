-- fanout schema, version 25: validate schema 24's devices_app_user_fkey over the devices
-- that were there before it.
--
-- Its own migration, so its own transaction: VALIDATE CONSTRAINT takes SHARE UPDATE
-- EXCLUSIVE on devices and ROW SHARE on users, so reads and writes of both go on while
-- it checks every device (one join of devices to users, ~seconds per million devices).
-- It fails only if a device's user is of another app, which the API never wrote.
ALTER TABLE devices VALIDATE CONSTRAINT devices_app_user_fkey;
