-- fanout schema, version 18: paced sends (issue #24, point 3).
--
-- An event with throttle_per_minute goes out at no more than that many devices a minute,
-- across every worker, paced from PostgreSQL: the fan-out records each batch with the time
-- it may go (not_before) and sends nothing to SQS; the pacer's sweep sends a batch once its
-- time has come, so the queue only carries what is due. The event's pace clock
-- (paced_until: when the devices scheduled so far will have gone; paced_devices: how many)
-- is moved on by every checkpoint, whichever shard and worker writes it, so the rate holds
-- whatever the number of workers. An app may set a default the event takes at publish.
-- Nullable columns without defaults: catalogue changes, whatever the tables' size.
ALTER TABLE events
    ADD COLUMN throttle_per_minute integer CHECK (throttle_per_minute > 0),
    ADD COLUMN paced_until         timestamptz,
    ADD COLUMN paced_devices       bigint;
ALTER TABLE apps
    ADD COLUMN default_throttle_per_minute integer CHECK (default_throttle_per_minute > 0);

-- A paced batch not yet sent: 'queued' with no due_at (nothing is on SQS for it, so the
-- reconciler has nothing to resend) and a not_before. The sweep gives it a due_at as it
-- sends it: from then on it is an ordinary queued batch.
ALTER TABLE delivery_batches ADD COLUMN not_before timestamptz;
-- "Which paced batches are due?", the pacer's sweep, every second.
CREATE INDEX delivery_batches_paced ON delivery_batches (not_before)
    WHERE status = 'queued' AND due_at IS NULL AND not_before IS NOT NULL;
