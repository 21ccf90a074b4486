"""Bulk import and export against a real PostgreSQL: each kind from CSV, NDJSON, gzip and
stdin; the same file twice changes nothing; bad rows are reported by line and never stop
the good ones; a dry run writes nothing; export then import changes nothing."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from fanout.bulk.load import SOURCED_TOPIC, UNKNOWN_USER, AppGone, import_rows
from fanout.store import apps, connect, devices, staging, subscriptions
from fanout.store.apps import DEFAULT_APP_ID

APNS_TOKEN = "ab" * 32


def fanout(database_url: str, *args: str, stdin: bytes | None = None) -> dict[str, Any]:
    """Run `fanout ARGS --json` as an operator would; its JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    env["FANOUT_DATABASE_URL"] = database_url
    # In a directory of its own: an import from stdin writes fanout-import.rejects.csv there.
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [sys.executable, "-m", "fanout", *args, "--json"],
            env=env,
            input=stdin,
            capture_output=True,
            timeout=120,
            check=False,
            cwd=cwd,
        )
    assert done.returncode == 0, done.stderr.decode()
    parsed: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return parsed


def export(database_url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    env["FANOUT_DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-m", "fanout", "export", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def devices_csv(users: int) -> str:
    lines = ["user_id,platform,token,web_push_p256dh,web_push_auth,locale,apns_environment"]
    for n in range(users):
        lines.append(f"u{n},fcm,fcm-token-{n},,,de,")
        lines.append(f"u{n},apns,{n:064x},,,,sandbox")
        lines.append(f"u{n},webpush,https://push.example/{n},BKEY{n},AUTH{n},,")
    return "\n".join(lines) + "\n"


async def fetchval(database_url: str, query: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def test_each_kind_from_csv_ndjson_gzip_and_stdin_and_again_changes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    users = tmp_path / "users.csv"
    users.write_text("user_id\n" + "".join(f"u{n}\n" for n in range(100)))
    devices = tmp_path / "devices.csv.gz"  # gzip, found by its magic bytes
    devices.write_bytes(gzip.compress(devices_csv(100).encode()))
    subscriptions = b"".join(
        orjson.dumps({"topic": f"author:{n % 7}", "user_id": f"u{n}"}) + b"\n" for n in range(100)
    )

    first = [
        fanout(database_url, "import", "users", str(users)),
        fanout(database_url, "import", "devices", str(devices)),
        fanout(
            database_url, "import", "subscriptions", "-", "--format", "ndjson", stdin=subscriptions
        ),
    ]
    assert [(c["rows"], c["inserted"], c["rejected"]) for c in first] == [
        (100, 100, 0),
        (300, 300, 0),
        (100, 100, 0),
    ]
    assert await fetchval(database_url, "SELECT count(*) FROM devices WHERE apns_sandbox") == 100
    assert await fetchval(database_url, "SELECT count(*) FROM topics") == 7

    again = [
        fanout(database_url, "import", "users", str(users)),
        fanout(database_url, "import", "devices", str(devices)),
        fanout(
            database_url, "import", "subscriptions", "-", "--format", "ndjson", stdin=subscriptions
        ),
    ]
    assert [(c["inserted"], c["updated"], c["unchanged"]) for c in again] == [
        (0, 0, 100),
        (0, 0, 300),
        (0, 0, 100),
    ]


async def test_one_bad_row_in_a_hundred_is_reported_by_line_and_the_others_land(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        assert (
            await import_rows(
                conn, kind="users", app_id=DEFAULT_APP_ID, numbered=[(1, {"user_id": "reader"})]
            )
        ).inserted == 1
        bad = {
            10: ({"platform": "apns", "token": "not-hex"}, "token: String should match pattern"),
            20: ({"platform": "pigeon", "token": "x"}, "platform: not one of apns, fcm, webpush"),
            30: (
                {"platform": "webpush", "token": "https://push.example/k"},
                "subscription.keys: missing",
            ),
            40: ({"platform": "fcm", "token": "t", "user_id": "stranger"}, UNKNOWN_USER),
            50: ("not JSON: unexpected character", "not JSON"),
        }
        rows: list[tuple[int, Any]] = []
        for line in range(1, 501):
            record: Any = {"user_id": "reader", "platform": "fcm", "token": f"token-{line}"}
            if line in bad:
                record = (
                    bad[line][0]
                    if isinstance(bad[line][0], str)
                    else {"user_id": "reader", **bad[line][0]}
                )
            rows.append((line, record))
        rejects: list[tuple[int, str]] = []
        counts = await import_rows(
            conn,
            kind="devices",
            app_id=DEFAULT_APP_ID,
            numbered=rows,
            chunk_rows=64,  # several chunks, the unknown user in one of them
            on_reject=lambda line, reason: rejects.append((line, reason)),
        )
        assert (counts.rows, counts.inserted, counts.rejected) == (500, 495, 5)
        assert sorted(line for line, _ in rejects) == sorted(bad)
        for line, reason in rejects:
            assert reason.startswith(bad[line][1]), (line, reason)
        assert await conn.fetchval("SELECT count(*) FROM devices") == 495
    finally:
        await conn.close()


async def test_a_changed_row_is_updated_and_a_token_twice_in_a_chunk_takes_the_last(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        await import_rows(
            conn,
            kind="users",
            app_id=DEFAULT_APP_ID,
            numbered=[(1, {"user_id": "a"}), (2, {"user_id": "b"})],
        )
        device = {"user_id": "a", "platform": "fcm", "token": "t1", "locale": "de"}
        await import_rows(conn, kind="devices", app_id=DEFAULT_APP_ID, numbered=[(1, device)])
        moved = await import_rows(
            conn,
            kind="devices",
            app_id=DEFAULT_APP_ID,
            numbered=[(1, {**device, "locale": "fr"}), (2, {**device, "user_id": "b"})],
        )
        assert (moved.inserted, moved.updated, moved.unchanged) == (0, 1, 1)
        owner = await conn.fetchval(
            "SELECT u.external_id FROM devices d JOIN users u ON u.id = d.user_id"
        )
        assert owner == "b"
        # A device the push service declared dead comes back active: a change.
        await conn.execute("UPDATE devices SET active = false")
        revived = await import_rows(
            conn, kind="devices", app_id=DEFAULT_APP_ID, numbered=[(1, {**device, "user_id": "b"})]
        )
        assert revived.updated == 1
        assert await conn.fetchval("SELECT active FROM devices")
    finally:
        await conn.close()


async def test_another_apps_users_are_unknown_to_an_import(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        other = await apps.insert_app(conn, key="other-app", name="other", settings={})
        await import_rows(
            conn, kind="users", app_id=DEFAULT_APP_ID, numbered=[(1, {"user_id": "a"})]
        )
        rejects: list[tuple[int, str]] = []
        counts = await import_rows(
            conn,
            kind="subscriptions",
            app_id=other.id,
            numbered=[(2, {"topic": "news", "user_id": "a"})],
            on_reject=lambda line, reason: rejects.append((line, reason)),
        )
        assert counts.inserted == 0 and rejects == [(2, UNKNOWN_USER)]
        assert await conn.fetchval("SELECT count(*) FROM topics") == 0
    finally:
        await conn.close()


async def test_a_subscription_to_a_sourced_topic_is_refused_by_line(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO sources (app_id, prefix, query, user_column) "
            "VALUES ($1, 'author:', 'SELECT 1', 'user_id')",
            DEFAULT_APP_ID,
        )
        await import_rows(
            conn, kind="users", app_id=DEFAULT_APP_ID, numbered=[(1, {"user_id": "a"})]
        )
        rejects: list[tuple[int, str]] = []
        counts = await import_rows(
            conn,
            kind="subscriptions",
            app_id=DEFAULT_APP_ID,
            numbered=[
                (2, {"topic": "author:7", "user_id": "a"}),
                (3, {"topic": "news", "user_id": "a"}),
                (4, {"topic": "author:", "user_id": "a"}),  # the prefix alone is no sourced key
            ],
            on_reject=lambda line, reason: rejects.append((line, reason)),
        )
        assert counts.inserted == 2 and rejects == [(2, SOURCED_TOPIC)]
        assert await conn.fetchval("SELECT count(*) FROM subscriptions") == 2
    finally:
        await conn.close()


async def test_a_dry_run_writes_nothing_and_says_what_would_change(
    database_url: str, tmp_path: Path
) -> None:
    users = tmp_path / "users.ndjson"
    users.write_bytes(b'{"user_id": "u1"}\n{"user_id": "u2"}\n{"user_id": "no spaces"}\n')
    counts = fanout(database_url, "import", "users", str(users), "--dry-run")
    assert (counts["inserted"], counts["rejected"], counts["dry_run"]) == (2, 1, True)
    assert await fetchval(database_url, "SELECT count(*) FROM users") == 0
    rejects = (tmp_path / "users.ndjson.rejects.csv").read_text().splitlines()
    assert rejects[0] == "line,reason" and rejects[1].startswith(
        '3,"user_id: not an external user id'
    )


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_export_then_import_changes_nothing(
    database_url: str, tmp_path: Path, fmt: str
) -> None:
    users = tmp_path / "users.csv"
    users.write_text("user_id\n" + "".join(f"u{n}\n" for n in range(20)))
    fanout(database_url, "import", "users", str(users))
    fanout(
        database_url, "import", "devices", "-", "--format", "csv", stdin=devices_csv(20).encode()
    )
    fanout(
        database_url,
        "import",
        "subscriptions",
        "-",
        "--format",
        "csv",
        stdin=b"topic,user_id\nnews,u1\nnews,u2\nsport,u1\n",
    )

    for kind, rows in (("devices", 60), ("subscriptions", 3)):
        exported = tmp_path / f"{kind}.{fmt}.gz"
        export(database_url, kind, str(exported), "--format", fmt)
        again = fanout(database_url, "import", kind, str(exported), "--format", fmt)
        assert (again["rows"], again["unchanged"], again["inserted"] + again["updated"]) == (
            rows,
            rows,
            0,
        )


async def test_a_onesignal_csv_export_lands_users_then_devices(
    database_url: str, tmp_path: Path
) -> None:
    export_file = tmp_path / "onesignal.csv.gz"
    rows = [
        "id,identifier,session_count,language,timezone,device_type,external_user_id,invalid_identifier,web_auth,web_p256",
        f"p1,{APNS_TOKEN},3,en,3600,0,reader-1,f,,",
        "p2,fcm-token-2,1,de,3600,1,reader-2,f,,",
        "p3,https://fcm.googleapis.com/fcm/send/x,1,fr,0,5,reader-2,f,AUTH,P256",
        "p4,someone@example.com,1,en,0,11,reader-3,f,,",  # an email subscription
        "p5,fcm-token-5,1,en,0,1,,f,,",  # no external id
    ]
    export_file.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    users = fanout(database_url, "import", "users", str(export_file), "--mapping", "onesignal")
    assert (users["inserted"], users["unchanged"], users["rejected"]) == (3, 1, 1)
    devices = fanout(database_url, "import", "devices", str(export_file), "--mapping", "onesignal")
    assert (devices["inserted"], devices["rejected"]) == (3, 2)
    rejects = (tmp_path / "onesignal.csv.gz.rejects.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rejects] == ["5", "6"]
    platforms = await fetchval(
        database_url, "SELECT string_agg(platform, ',' ORDER BY platform) FROM devices"
    )
    assert platforms == "apns,fcm,webpush"


async def test_chunks_on_several_connections_at_once_land_every_row_once(
    database_url: str,
) -> None:
    conns = [await connect(database_url) for _ in range(3)]
    try:
        conn, *more = conns
        users = [(n, {"user_id": f"u{n}"}) for n in range(1, 301)]
        await import_rows(
            conn,
            kind="users",
            app_id=DEFAULT_APP_ID,
            numbered=users,
            chunk_rows=40,
            more_connections=more,
        )
        # Every token three times, each time another user, in chunks of 50 on three
        # connections: the last line wins, as on one.
        moving = [
            (line, {"user_id": f"u{line % 300 + 1}", "platform": "fcm", "token": f"t{line % 200}"})
            for line in range(1, 601)
        ]
        await import_rows(
            conn,
            kind="devices",
            app_id=DEFAULT_APP_ID,
            numbered=moving,
            chunk_rows=50,
            more_connections=more,
        )
        owners = dict(
            await conn.fetch(
                "SELECT d.token, u.external_id FROM devices d JOIN users u ON u.id = d.user_id"
            )
        )
        assert owners == {f"t{line % 200}": f"u{line % 300 + 1}" for line in range(401, 601)}

        # The same token repeated with the same values, and subscriptions whose topics
        # are new to several chunks at once: twice, the second changing nothing.
        same = [
            (line, {"user_id": f"u{line % 200 + 1}", "platform": "fcm", "token": f"t{line % 200}"})
            for line in range(1, 601)
        ]
        subs = [
            (line, {"topic": f"t{line % 5}", "user_id": f"u{line % 300 + 1}"})
            for line in range(1, 601)
        ]
        for _ in range(2):
            devices = await import_rows(
                conn,
                kind="devices",
                app_id=DEFAULT_APP_ID,
                numbered=same,
                chunk_rows=50,
                more_connections=more,
            )
            follows = await import_rows(
                conn,
                kind="subscriptions",
                app_id=DEFAULT_APP_ID,
                numbered=subs,
                chunk_rows=50,
                more_connections=more,
            )
            assert (
                devices.rows == 600
                and follows.rows == 600
                and devices.rejected == follows.rejected == 0
            )
        assert (devices.inserted, devices.updated, devices.unchanged) == (
            0,
            0,
            600,
        )  # the second time
        assert (follows.inserted, follows.updated, follows.unchanged) == (0, 0, 600)
        assert await conn.fetchval("SELECT count(*) FROM devices") == 200
        assert (
            await conn.fetchval("SELECT count(*) FROM subscriptions") == 300
        )  # distinct (topic, user) pairs
        assert await conn.fetchval("SELECT count(*) FROM topics") == 5
    finally:
        for c in conns:
            await c.close()


async def test_users_tags_import_a_second_time_changes_nothing_and_a_row_without_keeps_them(
    database_url: str, tmp_path: Path
) -> None:
    users = tmp_path / "users.ndjson"
    users.write_bytes(
        b'{"user_id": "t1", "tags": {"plan": "premium", "age": 30}}\n'
        b'{"user_id": "t2", "tags": {"plan": "free"}}\n'
        b'{"user_id": "t3"}\n'
        b'{"user_id": "t4", "tags": {"nested": {"no": 1}}}\n'
    )
    first = fanout(database_url, "import", "users", str(users))
    assert (first["inserted"], first["updated"], first["rejected"]) == (3, 0, 1)
    rejects = (tmp_path / "users.ndjson.rejects.csv").read_text().splitlines()
    assert rejects[1].startswith("4,") and "tags" in rejects[1]
    again = fanout(database_url, "import", "users", str(users))
    assert (again["inserted"], again["updated"]) == (0, 0)

    # A CSV row carries its tags as a JSON cell; an empty cell keeps what the user has.
    csv_file = tmp_path / "users.csv"
    csv_file.write_text('user_id,tags\nt1,\nt3,"{""plan"": ""premium""}"\n')
    changed = fanout(database_url, "import", "users", str(csv_file))
    assert (changed["inserted"], changed["updated"]) == (0, 1)
    conn = await asyncpg.connect(database_url)
    try:
        stored = {
            r["external_id"]: orjson.loads(r["tags"])
            for r in await conn.fetch(
                "SELECT external_id, tags::text FROM users WHERE external_id LIKE 't_'"
            )
        }
        premium = await conn.fetchval(
            'SELECT count(*) FROM users WHERE tags @> \'{"plan": "premium"}\''
        )
    finally:
        await conn.close()
    assert stored == {
        "t1": {"plan": "premium", "age": 30},
        "t2": {"plan": "free"},
        "t3": {"plan": "premium"},
    }
    assert premium == 2


async def test_two_imports_creating_one_new_user_at_once_keep_the_later_ones_tags(
    database_url: str,
) -> None:
    # The order is forced, not timed: import A runs in a transaction left open, so its new
    # users are inserted but not committed; import B then inserts the same users and must
    # wait for A (B's backend is seen waiting on A's transaction lock); A commits; B ends.
    # Before the fix, B's update ran in a snapshot without A's row and its insert then did
    # nothing: B's tags were lost.
    a, b = await connect(database_url), await connect(database_url)
    try:
        first = [
            (1, {"user_id": "new-1", "tags": {"by": "a"}}),
            (2, {"user_id": "new-2", "tags": {"by": "a"}}),
        ]
        second = [(1, {"user_id": "new-1", "tags": {"by": "b"}}), (2, {"user_id": "new-2"})]
        held = a.transaction()
        await held.start()
        counts_a = await import_rows(a, kind="users", app_id=DEFAULT_APP_ID, numbered=first)
        assert counts_a.inserted == 2
        importing_b = asyncio.create_task(
            import_rows(b, kind="users", app_id=DEFAULT_APP_ID, numbered=second)
        )
        for _ in range(3000):  # up to ~30 s for B to reach A's rows
            waiting = await a.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                b.get_server_pid(),
            )
            if waiting or importing_b.done():
                break
            await asyncio.sleep(0.01)
        assert waiting, "import B never waited for A's uncommitted users"
        await held.commit()
        counts_b = await importing_b
        tags = {
            r["external_id"]: orjson.loads(r["tags"])
            for r in await a.fetch("SELECT external_id, tags::text FROM users ORDER BY 1")
        }
    finally:
        await a.close()
        await b.close()
    # B's row with tags replaces A's (as if it ran second, which it did); B's row without
    # tags keeps A's.
    assert tags == {"new-1": {"by": "b"}, "new-2": {"by": "a"}}
    assert (counts_b.inserted, counts_b.updated, counts_b.unchanged) == (0, 1, 1)


# --- The foreign keys checked by the chunk's statements ------------------------------------


async def _waiting_on_a_lock(conn: asyncpg.Connection, pid: int, task: asyncio.Task[Any]) -> bool:
    for _ in range(3000):  # up to ~30 s for the other backend to reach the lock
        waiting = await conn.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting or task.done():
            return bool(waiting)
        await asyncio.sleep(0.01)
    return False


async def test_chunks_skip_the_foreign_key_triggers_only_where_their_statements_check_them(
    database_url: str,
) -> None:
    role = f"importer_{uuid.uuid4().hex[:8]}"
    conn = await connect(database_url)
    await conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        # A superuser on fanout's own schema: the chunk's statements check every foreign key.
        assert await staging.may_skip_fk_triggers(conn)
        # A role that may not set session_replication_role: the triggers run, and the
        # import lands the same (the statements' own checks are then redundant).
        await conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        other = await asyncpg.connect(database_url, user=role)
        try:
            assert not await staging.may_skip_fk_triggers(other)
            for kind, numbered in (
                ("users", [(2, {"user_id": "r1"}), (3, {"user_id": "r2"})]),
                ("devices", [(2, {"user_id": "r1", "platform": "fcm", "token": "r-tok"})]),
                ("subscriptions", [(2, {"topic": "t:r", "user_id": "r2"})]),
            ):
                first = await import_rows(
                    other, kind=kind, app_id=DEFAULT_APP_ID, numbered=numbered
                )
                again = await import_rows(
                    other, kind=kind, app_id=DEFAULT_APP_ID, numbered=numbered
                )
                assert (first.inserted, again.unchanged) == (len(numbered), len(numbered))
        finally:
            await other.close()
        # A foreign key the statements do not know of: the triggers run.
        await conn.execute("CREATE TABLE device_notes (id bigint PRIMARY KEY)")
        await conn.execute("ALTER TABLE devices ADD COLUMN note bigint REFERENCES device_notes")
        assert not await staging.may_skip_fk_triggers(conn)
        await conn.execute("ALTER TABLE devices DROP COLUMN note")
        assert await staging.may_skip_fk_triggers(conn)
        # Someone's trigger on a table the import writes is never skipped: it fires for
        # every imported device.
        await conn.execute("""
            CREATE TABLE devices_seen (token text);
            CREATE FUNCTION see_device() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN INSERT INTO devices_seen VALUES (NEW.token); RETURN NEW; END $$;
            CREATE TRIGGER seen AFTER INSERT ON devices FOR EACH ROW EXECUTE FUNCTION see_device();
        """)
        assert not await staging.may_skip_fk_triggers(conn)
        await import_rows(
            conn, kind="users", app_id=DEFAULT_APP_ID, numbered=[(2, {"user_id": "u1"})]
        )
        landed = await import_rows(
            conn,
            kind="devices",
            app_id=DEFAULT_APP_ID,
            numbered=[
                (n, {"user_id": "u1", "platform": "fcm", "token": f"t{n}"}) for n in range(2, 12)
            ],
        )
        assert landed.inserted == 10
        assert await conn.fetchval("SELECT count(*) FROM devices_seen") == 10
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await conn.close()


async def test_a_chunk_without_triggers_holds_its_users_and_topics_until_it_commits(
    database_url: str,
) -> None:
    # What the triggers' FOR KEY SHARE gave, the statements give: a deletion of a user
    # (or topic) the open chunk writes for waits for it, then cascades to what it wrote.
    a, b = await connect(database_url), await connect(database_url)
    try:
        await import_rows(
            a,
            kind="users",
            app_id=DEFAULT_APP_ID,
            numbered=[(2, {"user_id": "u1"}), (3, {"user_id": "u2"})],
        )
        await a.execute("INSERT INTO topics (app_id, key) VALUES ($1, 't:1')", DEFAULT_APP_ID)
        await b.execute("SET lock_timeout = '300ms'")
        for kind, records, statement in (
            (
                "devices",
                [(2, "u1", "fcm", "tok-1", None, None, None, False)],
                devices.upsert_staged_devices,
            ),
            ("subscriptions", [(2, "t:1", "u2")], subscriptions.subscribe_staged),
        ):
            chunk = a.transaction()
            await chunk.start()
            await staging.stage(a, kind=kind, records=records, skip_fk_triggers=True)
            outcome = await statement(a, app_id=DEFAULT_APP_ID)
            assert outcome.inserted == 1
            held = "u1" if kind == "devices" else "u2"
            with pytest.raises(asyncpg.LockNotAvailableError):
                await b.execute("DELETE FROM users WHERE external_id = $1", held)
            if kind == "subscriptions":
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await b.execute("DELETE FROM topics WHERE key = 't:1'")
            await chunk.commit()
        await b.execute("DELETE FROM users WHERE external_id IN ('u1', 'u2')")
        assert await a.fetchval("SELECT count(*) FROM devices") == 0
        assert await a.fetchval("SELECT count(*) FROM subscriptions") == 0
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("kind", ["devices", "subscriptions"])
async def test_a_user_deleted_while_a_chunk_waits_for_it_is_a_reject_and_the_rest_land(
    database_url: str, kind: str
) -> None:
    # The order is forced, not timed: B deletes the user u1 in a transaction left open; the import then reaches that row and waits (seen waiting in
    # pg_stat_activity); B commits. Before, the foreign key's trigger then failed the
    # whole chunk (ForeignKeyViolationError); now that line is rejected and the rest land.
    a, b, watch = (
        await connect(database_url),
        await connect(database_url),
        await connect(database_url),
    )
    try:
        await import_rows(
            a,
            kind="users",
            app_id=DEFAULT_APP_ID,
            numbered=[(2, {"user_id": "u1"}), (3, {"user_id": "u2"})],
        )
        await a.execute(
            "INSERT INTO topics (app_id, key) VALUES ($1, 't:1'), ($1, 't:2')", DEFAULT_APP_ID
        )
        records: list[tuple[int, Any]] = (
            [
                (2, {"user_id": "u1", "platform": "fcm", "token": "tok-1"}),
                (3, {"user_id": "u2", "platform": "fcm", "token": "tok-2"}),
            ]
            if kind == "devices"
            else [(2, {"topic": "t:1", "user_id": "u1"}), (3, {"topic": "t:2", "user_id": "u2"})]
        )
        deleting = b.transaction()
        await deleting.start()
        await b.execute("DELETE FROM users WHERE external_id = 'u1'")
        rejects: list[tuple[int, str]] = []
        importing = asyncio.create_task(
            import_rows(
                a,
                kind=kind,
                app_id=DEFAULT_APP_ID,
                numbered=records,
                on_reject=lambda line, reason: rejects.append((line, reason)),
            )
        )
        assert await _waiting_on_a_lock(watch, a.get_server_pid(), importing)
        await deleting.commit()
        counts = await importing
        landed = await a.fetchval(f"SELECT count(*) FROM {kind}")
    finally:
        for conn in (a, b, watch):
            await conn.close()
    assert (counts.inserted, counts.rejected) == (1, 1)
    assert rejects == [(2, UNKNOWN_USER)]
    assert landed == 1


async def test_an_import_into_an_app_that_is_gone_stops_with_app_gone(database_url: str) -> None:
    # Without the triggers, the app's row is locked by the chunk (apps.lock_app_key): an
    # app that is not there stops the import as the foreign key would have.
    conn = await connect(database_url)
    try:
        with pytest.raises(AppGone):
            await import_rows(conn, kind="users", app_id=999_999, numbered=[(2, {"user_id": "u1"})])
        assert await conn.fetchval("SELECT count(*) FROM users") == 0
    finally:
        await conn.close()
