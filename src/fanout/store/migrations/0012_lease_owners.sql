-- fanout schema, version 12: leases with owners (issue #27).
--
-- A shard or a batch is leased to one invocation (a message attempt) at a time. The owner
-- is a random uuid the invocation makes: its claim writes it, and its renewals,
-- checkpoints, finishes and releases name it, so one by an invocation whose lease has
-- lapsed and been taken is refused, and a failed invocation gives up only what it holds.
-- A claim that committed while the driver reported a failure (a PostgreSQL restart) is
-- taken again by its own owner's retry instead of waiting out the lease.
--
-- NULL: never claimed, or released. A nullable column without a default is added without
-- rewriting the table (a change to the catalog only), so this is instant on a large one.
ALTER TABLE fanout_shards ADD COLUMN lease_owner uuid;
ALTER TABLE delivery_batches ADD COLUMN lease_owner uuid;
