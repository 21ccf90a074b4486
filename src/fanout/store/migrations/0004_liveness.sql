-- fanout schema, version 4: PostgreSQL drives liveness; the queue is transport.
--
-- Every unit of work (an event, a shard, a delivery batch, a retry batch) has a row from
-- the moment it exists, and while it is not finished a `due_at`: the time by which it
-- should have moved on. The reconciler (runtime/reconciler.py) finds rows past it and
-- sends their message again from what is recorded here, so a message the queue lost,
-- dead-lettered or never got costs time, never devices.

-- Events end in a terminal state, with the time they reached it.
ALTER TABLE events DROP CONSTRAINT events_status_check;
ALTER TABLE events ADD CONSTRAINT events_status_check CHECK (status IN (
    'pending', 'enqueued', 'fanning_out', 'fanned_out',
    'delivered', 'partially_delivered', 'failed', 'no_recipients'));
ALTER TABLE events
    ADD COLUMN due_at      timestamptz,
    ADD COLUMN resends     integer NOT NULL DEFAULT 0,
    ADD COLUMN finished_at timestamptz,
    ADD COLUMN last_error  text;
-- A new event is due FANOUT_RECONCILE_AFTER seconds after it is committed (INSERT_EVENT):
-- the publisher sends its fan-out message at once and marks it enqueued (which moves
-- due_at on); if it died in between, the reconciler sends it (the transactional outbox).
UPDATE events SET due_at = created_at WHERE status IN ('pending', 'enqueued', 'fanned_out');
-- The reconciler's scan of events (pending/enqueued: the fan-out message may be lost;
-- fanned_out: waiting for its last batch to be recorded).
CREATE INDEX events_due ON events (due_at) WHERE due_at IS NOT NULL;
DROP INDEX events_pending;

ALTER TABLE fanout_shards DROP CONSTRAINT fanout_shards_status_check;
ALTER TABLE fanout_shards ADD CONSTRAINT fanout_shards_status_check
    CHECK (status IN ('pending', 'running', 'done', 'failed'));
ALTER TABLE fanout_shards
    ADD COLUMN due_at     timestamptz,
    ADD COLUMN resends    integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text;
UPDATE fanout_shards SET due_at = coalesce(lease_until, now()) WHERE status <> 'done';
CREATE INDEX fanout_shards_due ON fanout_shards (due_at) WHERE due_at IS NOT NULL;

-- Delivery batches are recorded when they are sent to the queue ('queued'), not first
-- when a worker claims them, with what it takes to send them again: a fan-out batch its
-- closed range of users (re-read from subscriptions), a retry batch its device ids.
ALTER TABLE delivery_batches DROP CONSTRAINT delivery_batches_status_check;
ALTER TABLE delivery_batches ADD CONSTRAINT delivery_batches_status_check
    CHECK (status IN ('queued', 'running', 'done'));
ALTER TABLE delivery_batches
    ALTER COLUMN status SET DEFAULT 'queued',
    ADD COLUMN shard_no        integer,
    ADD COLUMN first_user_id   bigint,
    ADD COLUMN last_user_id    bigint,
    ADD COLUMN device_ids      bigint[],
    ADD COLUMN due_at          timestamptz,
    ADD COLUMN resends         integer NOT NULL DEFAULT 0,
    ADD COLUMN failure_reasons jsonb,
    ADD COLUMN last_error      text;
UPDATE delivery_batches SET due_at = coalesce(lease_until, now()) WHERE status <> 'done';
CREATE INDEX delivery_batches_due ON delivery_batches (due_at) WHERE due_at IS NOT NULL;
-- "Is any batch of this event still open?", asked when a batch or shard finishes.
CREATE INDEX delivery_batches_open ON delivery_batches (event_id) WHERE status <> 'done';
