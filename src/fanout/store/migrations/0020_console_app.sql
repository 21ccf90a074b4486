-- fanout schema, version 20: the app an admin's console session looks at (issue #22.5).

-- NULL: the app of the session's key (every session of a key without the admin scope, and
-- an admin's until it switches). Only a key with the admin scope switches (POST
-- /console/app); the app's deletion returns its viewers to their key's app.
ALTER TABLE console_sessions ADD COLUMN app_id bigint REFERENCES apps (id) ON DELETE SET NULL;
