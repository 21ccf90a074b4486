-- fanout schema, version 7: provider rate budgets shared by every worker (issue #11).
--
-- One token bucket per push-service credential ('fcm:<project>', 'apns:<team>:<topic>',
-- 'webpush:<key>'). Workers lease slices of it a few times a second (LEASE_QUOTA), so the
-- row is small and hot. UNLOGGED: no WAL for it, and a crash empties it, which only
-- restarts every bucket full; replicas never need it.
CREATE UNLOGGED TABLE provider_quotas (
    credential   text PRIMARY KEY,
    tokens       double precision NOT NULL,      -- left after the last lease
    updated_at   double precision NOT NULL,      -- seconds since the epoch, workers' clocks
    paused_until double precision NOT NULL DEFAULT 0,  -- a 429's Retry-After, for everyone
    last_grant   bigint NOT NULL DEFAULT 0       -- what the last lease got (RETURNING)
);
