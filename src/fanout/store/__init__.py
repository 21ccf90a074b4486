"""PostgreSQL: the tables fanout owns, one module per table or concern, each statement
written beside the one function that runs it (with the index it relies on), and that
function taking its parameters by name. A call site imports the module of the table it
touches (``from fanout.store import events`` … ``events.load_event(conn, event_id=…)``), so
which stage reads or writes which table shows in its imports.

- ``events``: publishing, loading and locking an event, its progress, the due scan.
- ``lifecycle``: an event's states and every transition, the only writer of its status.
- ``shards``, ``batches``: the fan-out's and the delivery's units of work, each with a
  lease and a due time, and the reconciler's claims of those overdue.
- ``recipients``: devices as batches carry them (the fan-out's hot path).
- ``fragments``: the SQL several statements share (the device's wire form, the audience
  and schedule rules, the claim of overdue work).
- ``waves``: an event's held releases (local-time waves, recipients deferred by quiet hours).
- ``subscriptions``, ``devices``, ``api_keys``: what the HTTP API and the CLI manage.
- ``audience``: users' preferences, topic mutes, frequency caps and the sends they count.
- ``quotas``: the provider rate budgets every worker leases from.
- ``seeding``: the demo's and the benchmarks' subscribers.
- ``console``: the operator console's reads and sessions, and the per-device failures
  the delivery records for it.
- ``connection``: pools and connections (re-exported here), ``migrate``: the schema.
"""

from fanout.store.connection import (
    UNTRUSTWORTHY,
    acquire,
    connect,
    create_pool,
    create_read_pool,
    driver_options,
    naming_the_database,
)

__all__ = [
    "UNTRUSTWORTHY",
    "acquire",
    "connect",
    "create_pool",
    "create_read_pool",
    "driver_options",
    "naming_the_database",
]
