"""The read of a sourced event's members at planning, through the sandbox the app's query
runs in (as FANOUT_SOURCE_ROLE, read-only: store.sources.read_members), against the same
query spliced into fanout's statement as it was before the sandbox (its baseline, measured
in the same run, alternated round by round).

    python bench/source_members.py [--members 100000] [--users 200000] [--rounds 7] [--json]

PostgreSQL as in bench/api.py. The app's table (``benchapp.follows``, indexed by author)
holds one author followed by ``--members`` of the app's ``--users`` users. Each round reads
them both ways into ``event_members``, each in a transaction rolled back; the first round
warms the caches and is not counted. It prints each way's median in ms, the runs, and the
ratio sandbox/spliced. Page reads are not measured here: they read ``event_members`` and
never run the app's query (bench/pipeline.py --source measures the whole fan-out).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import orjson
from _services import database

from fanout.store import connect, sources
from fanout.store.apps import DEFAULT_APP_ID
from fanout.store.migrate import migrate

QUERY = "SELECT follower_id AS user_id FROM benchapp.follows WHERE author_id = $1::text::bigint"
# The statement before the sandbox: the app's query spliced in, run with fanout's role.
SPLICED = f"""INSERT INTO event_members (event_id, user_id)
SELECT $2, u.id FROM ({QUERY}) AS q
JOIN users AS u ON u.app_id = $3 AND u.external_id = q.user_id::text
ON CONFLICT DO NOTHING"""


@dataclass(frozen=True)
class Result:
    members: int
    users: int
    median_ms: dict[str, float]
    runs_ms: dict[str, list[int]]
    sandbox_over_spliced: float


async def measure(database_url: str, members: int, users: int, rounds: int) -> Result:
    conn = await connect(database_url)
    try:
        await migrate(conn)
        await conn.execute(
            """CREATE SCHEMA benchapp;
               CREATE TABLE benchapp.follows (author_id bigint NOT NULL, follower_id text NOT NULL);
               GRANT USAGE ON SCHEMA benchapp TO fanout_source;
               GRANT SELECT ON benchapp.follows TO fanout_source;"""
        )
        await conn.execute(
            """INSERT INTO users (app_id, external_id)
               SELECT $1, 'u' || g FROM generate_series(1, $2) AS g""",
            DEFAULT_APP_ID,
            users,
        )
        step = max(1, users // members)
        await conn.execute(
            """INSERT INTO benchapp.follows
               SELECT 1, 'u' || g FROM generate_series(1, $1::bigint * $2, $2) AS g""",
            members,
            step,
        )
        await conn.execute("CREATE INDEX ON benchapp.follows (author_id); ANALYZE")
        event_id = 1  # event_members has no foreign key (schema 23): no event is needed
        source = sources.Source(0, DEFAULT_APP_ID, "benchauthor:", QUERY, "user_id", datetime.now())
        times: dict[str, list[float]] = {"spliced": [], "sandbox": []}
        read = 0
        for round_ in range(rounds):
            for way in times:
                transaction = conn.transaction()
                await transaction.start()
                started = time.perf_counter()
                if way == "spliced":
                    status = await conn.execute(SPLICED, "1", event_id, DEFAULT_APP_ID)
                    read = int(status.rsplit(" ", 1)[-1])
                else:
                    read = await sources.read_members(
                        conn, source=source, key="1", event_id=event_id
                    )
                elapsed = time.perf_counter() - started
                await transaction.rollback()
                if round_:
                    times[way].append(elapsed * 1000)
        medians = {way: statistics.median(ms) for way, ms in times.items()}
        return Result(
            members=read,
            users=users,
            median_ms={way: round(ms, 1) for way, ms in medians.items()},
            runs_ms={way: [round(ms) for ms in runs] for way, runs in times.items()},
            sandbox_over_spliced=round(medians["sandbox"] / medians["spliced"], 3),
        )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with database() as url:
        result = asyncio.run(measure(url, args.members, args.users, args.rounds))
    if args.json:
        print(orjson.dumps(asdict(result)).decode())
        return
    print(f"members {result.members:,} of {result.users:,} users read at planning")
    for way, ms in result.median_ms.items():
        print(f"  {way:<8} median {ms} ms  runs {result.runs_ms[way]}")
    print(f"  sandbox/spliced  {result.sandbox_over_spliced}")


if __name__ == "__main__":
    main()
