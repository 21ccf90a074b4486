-- fanout schema, version 6: devices held back by a provider credential's breaker, and an
-- index of the open events for the metrics.
--
-- After a config error (APNs InvalidProviderToken, FCM 401/403, a VAPID key refused) the
-- credential's devices are not sent but held back: recorded as a batch of their own (by
-- device ids, like a retry batch) that is sent again after a cool-down. `held_reason`
-- names the config error; while such a batch is open, the event status shows its devices
-- under `held_by_breaker` (EVENT_PROGRESS). NULL for every other batch.
ALTER TABLE delivery_batches ADD COLUMN held_reason text;

-- The open events, for the event-level gauges `GET /metrics` reads at every scrape
-- (EVENTS_OPEN): a few rows at any time, so the scrape never reads the whole table.
CREATE INDEX events_open ON events (status, created_at)
    WHERE status IN ('pending', 'enqueued', 'fanning_out', 'fanned_out');
