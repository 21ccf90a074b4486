"""How fast does a bulk import land, and does its memory stay flat?

    python bench/import.py [--devices 1000000] [--runs 3] [--rss-factor 10] [--json]

Writes files of N users, N devices (a third each APNs, FCM, Web Push) and 2N
subscriptions (each user follows 2 of 1,000 topics), then imports each kind with
`fanout import` (a process of its own, as an operator runs it), ``--runs`` times into
emptied tables: rows/s per kind, the median. Then:
- the same files again: the rows changed must be 0;
- a devices file with 1% bad rows (malformed APNs tokens): 99% must land and the rejects
  file must list each bad line;
- peak RSS: each import's own (wait4), and a devices file ``--rss-factor`` times larger
  imported once: its peak RSS must be at most 1.2x the N file's (memory flat in the size
  of the input).
The issue's figures: --devices 1000000 (10M rows for the RSS check; target >= 100,000
devices rows/s). --devices 50000 --rss-factor 4 is a smoke run (~30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _services import database

TOPICS = 1_000


def write_files(
    directory: Path, n: int, *, bad_every: int = 0, only_devices: bool = False
) -> dict[str, Path]:
    """users.csv, devices.csv, subscriptions.csv of n users in ``directory``; with
    ``bad_every``, every bad_every-th device an APNs token that is not hex."""
    files = {
        kind: directory / f"{kind}-{n}{'-bad' if bad_every else ''}.csv"
        for kind in ("users", "devices", "subscriptions")
    }
    if not only_devices:
        with open(files["users"], "w") as out:
            out.write("user_id\n")
            out.writelines(f"user-{i}\n" for i in range(n))
        with open(files["subscriptions"], "w") as out:
            out.write("topic,user_id\n")
            out.writelines(
                f"topic:{(i * 7 + k) % TOPICS},user-{i}\n" for i in range(n) for k in (0, 1)
            )
    with open(files["devices"], "w") as out:
        out.write("user_id,platform,token,web_push_p256dh,web_push_auth,locale,apns_environment\n")
        for i in range(n):
            user = f"user-{i % max(n // 10, 1) if only_devices else i}"
            if bad_every and i % bad_every == bad_every - 1:
                out.write(f"{user},apns,not-a-hex-token-{i},,,,\n")
            elif i % 3 == 0:
                out.write(f"{user},apns,{i:064x},,,en,\n")
            elif i % 3 == 1:
                out.write(f"{user},fcm,fcm-{i:020d}-token,,,de,\n")
            else:
                out.write(f"{user},webpush,https://push.example/{i:020d},BP{i:020d},AU{i:016d},,\n")
    return files


def fanout_import(url: str, kind: str, path: Path) -> tuple[dict[str, Any], float, int]:
    """`fanout import KIND PATH --json`: its counts, seconds, and peak RSS (bytes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    env["FANOUT_DATABASE_URL"] = url
    command = [sys.executable, "-m", "fanout", "import", kind, str(path), "--json", "--no-progress"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own peak RSS
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise SystemExit(f"fanout import {kind} failed: {err.read().decode()}")
        counts = orjson.loads(out.read().splitlines()[-1])
    return counts, seconds, usage.ru_maxrss * 1024  # Linux: kilobytes


async def sql(url: str, statement: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


def migrate(url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    env["FANOUT_DATABASE_URL"] = url
    subprocess.run(
        [sys.executable, "-m", "fanout", "migrate"], env=env, check=True, capture_output=True
    )


def run(n: int, runs: int, rss_factor: int) -> dict[str, Any]:
    result: dict[str, Any] = {"devices": n, "subscriptions": 2 * n, "users": n, "runs": runs}
    with database() as url, tempfile.TemporaryDirectory() as tmp:
        migrate(url)
        files = write_files(Path(tmp), n)
        rates: dict[str, list[float]] = {"users": [], "devices": [], "subscriptions": []}
        rss: dict[str, int] = {}
        for _ in range(runs):
            asyncio.run(sql(url, "TRUNCATE users, topics, devices, subscriptions CASCADE"))
            for kind in ("users", "devices", "subscriptions"):
                counts, seconds, peak = fanout_import(url, kind, files[kind])
                assert counts["inserted"] == counts["rows"], (kind, counts)
                rates[kind].append(counts["rows"] / seconds)
                rss[kind] = max(rss.get(kind, 0), peak)
        result["rows_per_second"] = {k: round(statistics.median(v)) for k, v in rates.items()}
        result["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in rss.items()}

        changed = {}
        for kind in ("users", "devices", "subscriptions"):
            counts, _, _ = fanout_import(url, kind, files[kind])
            changed[kind] = counts["inserted"] + counts["updated"]
        result["second_import_changed"] = changed

        bad = write_files(Path(tmp), n, bad_every=100, only_devices=True)["devices"]
        asyncio.run(sql(url, "TRUNCATE devices"))
        counts, _, _ = fanout_import(url, "devices", bad)
        rejects = Path(f"{bad}.rejects.csv").read_text().splitlines()[1:]
        expected = {i + 2 for i in range(n) if i % 100 == 99}  # line = row + header
        result["one_percent_bad"] = {
            "inserted": counts["inserted"],
            "rejected": counts["rejected"],
            "each_bad_line_reported": {int(r.split(",")[0]) for r in rejects} == expected,
        }

        if rss_factor > 1:
            big = write_files(Path(tmp), n * rss_factor, only_devices=True)["devices"]
            asyncio.run(sql(url, "TRUNCATE devices"))
            counts, seconds, peak = fanout_import(url, "devices", big)
            result["rss_check"] = {
                "rows": counts["rows"],
                "rows_per_second": round(counts["rows"] / seconds),
                "peak_rss_mb": round(peak / 2**20, 1),
                "ratio_to_n": round(peak / rss["devices"], 2),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-factor", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.devices, args.runs, args.rss_factor)
    if args.json:
        print(orjson.dumps(result).decode())
        return
    for kind, rate in result["rows_per_second"].items():
        rss = result["peak_rss_mb"][kind]
        print(f"{kind:<14} {rate:>10,} rows/s (median of {args.runs}), peak RSS {rss} MB")
    print(f"second import, rows changed: {result['second_import_changed']}")
    bad = result["one_percent_bad"]
    print(
        f"1% bad devices: {bad['inserted']:,} landed, {bad['rejected']:,} rejected, "
        f"each bad line reported: {bad['each_bad_line_reported']}"
    )
    if check := result.get("rss_check"):
        print(
            f"{check['rows']:,} devices: {check['rows_per_second']:,} rows/s, peak RSS "
            f"{check['peak_rss_mb']} MB = {check['ratio_to_n']}x the {args.devices:,}-row "
            "file's (flat: <= 1.2)"
        )


if __name__ == "__main__":
    main()
