-- fanout schema, version 17: opens and clicks (issue #24).
--
-- One row per (event, device) the first time its push is reported opened: the primary key
-- is what makes an open token count once however often it is posted (a retried request, a
-- replay). The action is that first report's (NULL: the notification itself was tapped).
-- The device is no foreign key: a device deleted after it opened the push keeps the open
-- counted; platform is copied from it then (NULL if it was already gone). seconds_to_open
-- is written once, from the event's publish (or send_at) to the open, so the status's
-- percentiles read one column.
CREATE TABLE opens (
    event_id        bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    device_id       bigint NOT NULL,
    app_id          integer NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    platform        text,
    action          text,
    opened_at       timestamptz NOT NULL,
    seconds_to_open double precision NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, device_id)
);

-- A click on a named action: each (event, device, action) once, beside the open it made.
CREATE TABLE open_actions (
    event_id   bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    device_id  bigint NOT NULL,
    action     text NOT NULL,
    clicked_at timestamptz NOT NULL,
    PRIMARY KEY (event_id, device_id, action)
);
