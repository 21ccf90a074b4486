"""How long `fanout migrate` takes to give every row an app (migration 0014), per million rows.

    python bench/migration.py [--users 1000000] [--json]

Builds a database at the previous release's schema (migrations 1-13), fills it with
``--users`` users, one APNs device each, one subscription each (to one of 100 topics) and an
event per 1,000 users, all made by PostgreSQL itself (generate_series: the bench's memory
does not grow with the size), then times migration 0014 alone (app ownership: a column and
a validated foreign key per owned table, the per-app unique indexes rebuilt) and the
migrations after it. 0014 runs in one transaction, which locks the tables it alters: the
seconds it takes are the upgrade's maintenance window (README, "Upgrading to apps").

Prints the seconds of 0014, the rows of the tables it alters, and seconds per million of
those rows. The default (1 M users: ~3 M rows) takes a few minutes; ``--users 100000`` is
a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg
import orjson
from _services import database

from fanout.store.migrate import migrate

APP_OWNERSHIP = 14  # the migration measured
TOPICS = 100

# The previous release's rows, made in the database. Devices' tokens are 64 hex digits, as
# APNs tokens are, so the (platform, token) index is the size a real one is.
SEED = [
    "INSERT INTO users (external_id) SELECT 'user-' || i FROM generate_series(1, $1) AS i",
    f"INSERT INTO topics (key) SELECT 'topic:' || i FROM generate_series(1, {TOPICS}) AS i",
    """INSERT INTO devices (user_id, platform, token)
       SELECT id, 'apns', md5(id::text) || md5('t' || id::text) FROM users""",
    f"""INSERT INTO subscriptions (topic_id, user_id)
       SELECT (SELECT min(id) FROM topics) + u.id % {TOPICS}, u.id FROM users AS u""",
    """INSERT INTO events (topic_id, notification)
       SELECT (SELECT min(id) FROM topics), '{"title": "before the upgrade"}'::jsonb
       FROM generate_series(1, greatest(1, $1 / 1000))""",
]
# The tables 0014 adds app_id to (or re-indexes by app) that grow with an app's users.
OWNED = ("users", "topics", "devices", "events")


async def run(url: str, users: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, up_to=APP_OWNERSHIP - 1)
        started = time.monotonic()
        for statement in SEED:
            await (conn.execute(statement, users) if "$1" in statement else conn.execute(statement))
        seeded = time.monotonic() - started
        await conn.execute("VACUUM ANALYZE")  # as a database in use would be
        rows = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in OWNED}
        started = time.monotonic()
        applied = await migrate(conn, up_to=APP_OWNERSHIP)
        ownership = time.monotonic() - started
        started = time.monotonic()
        later = await migrate(conn)
        after = time.monotonic() - started
        owned = await conn.fetchval("SELECT count(*) FROM devices WHERE app_id IS NOT NULL")
    finally:
        await conn.close()
    assert len(applied) == 1 and owned == rows["devices"], (applied, owned)
    total = sum(rows.values())
    return {
        "users": users,
        "rows": rows,
        "rows_total": total,
        "seed_seconds": round(seeded, 2),
        "migration_0014_seconds": round(ownership, 2),
        "seconds_per_million_rows": round(ownership / (total / 1e6), 2),
        "later_migrations": len(later),
        "later_migrations_seconds": round(after, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="One JSON object instead.")
    args = parser.parse_args()
    with database() as url:
        result = asyncio.run(run(url, args.users))
    if args.json:
        print(orjson.dumps(result).decode())
        return
    print(f"rows: {result['rows']} ({result['rows_total']:,} in all)")
    print(f"seeding (the previous release's rows): {result['seed_seconds']} s")
    print(
        f"migration 0014 (app ownership): {result['migration_0014_seconds']} s, "
        f"{result['seconds_per_million_rows']} s per million rows"
    )
    print(
        f"the {result['later_migrations']} migrations after it: "
        f"{result['later_migrations_seconds']} s"
    )


if __name__ == "__main__":
    main()
