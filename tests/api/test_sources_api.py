"""Sources over the HTTP API: admin routes under the app (an app's own keys are refused), a
query that would scan the table refused with a 422 naming ``query`` and quoting the scan, a
round trip (put, list, test, delete), and subscriptions to a sourced topic refused (409)."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from fanout.api.keys import create_api_key
from fanout.store import connect
from tests.api.conftest import ApiServer, start_server
from tests.processes import stop

FOLLOWERS = "SELECT follower_id::text AS user_id FROM books.follows WHERE author_id = :key::bigint"


async def admin_key(api: ApiServer) -> str:
    conn = await connect(api.settings.database_dsn())
    try:
        await conn.execute("SELECT pg_advisory_lock(2525)")
        await conn.execute(
            """CREATE SCHEMA IF NOT EXISTS books;
               CREATE TABLE IF NOT EXISTS books.follows (
                   author_id bigint NOT NULL, follower_id bigint NOT NULL);
               CREATE INDEX IF NOT EXISTS follows_by_author ON books.follows (author_id);
               CREATE TABLE IF NOT EXISTS books.unindexed_follows (
                   author_id bigint NOT NULL, follower_id bigint NOT NULL);
               GRANT USAGE ON SCHEMA books TO fanout_source;
               GRANT SELECT ON books.follows, books.unindexed_follows TO fanout_source;"""
        )
        await conn.execute("SELECT pg_advisory_unlock(2525)")
        return (await create_api_key(conn, ["admin"], "sources admin"))[1]
    finally:
        await conn.close()


async def test_sources_round_trip_and_a_sourced_topic_takes_no_subscriptions(
    api: ApiServer,
) -> None:
    admin = {"Authorization": f"Bearer {await admin_key(api)}"}
    prefix = f"writer{secrets.token_hex(3)}:"
    author = secrets.randbelow(2**40)
    async with api.client() as client:
        url = f"/v1/apps/default/sources/{prefix}"
        put = await client.put(url, json={"query": FOLLOWERS, "sample_key": "7"}, headers=admin)
        assert put.status_code == 200, put.text
        assert put.json()["query"].endswith("author_id = $1::text::bigint")
        listed = await client.get("/v1/apps/default/sources", headers=admin)
        assert prefix in [s["prefix"] for s in listed.json()]
        tested = await client.get(f"{url}/test", params={"key": str(author)}, headers=admin)
        assert tested.json() == {"prefix": prefix, "key": str(author), "users": 0, "sample": []}

        async with api.client("manage") as app_key:
            # An app's key is no operator's: refused, whatever its scopes.
            assert (await app_key.get(f"{url}/test?key=1")).status_code == 403
            assert (await app_key.delete(url)).status_code == 403
            assert (await app_key.put(url, json={"query": FOLLOWERS})).status_code == 403
            refused = await app_key.put(f"/v1/topics/{prefix}{author}/subscribers/reader-1")
            assert refused.status_code == 409
            assert f"comes from the source '{prefix}'" in refused.json()["detail"]
            bulk = await app_key.post(
                f"/v1/topics/{prefix}{author}/subscribers", json={"user_ids": ["reader-1"]}
            )
            assert bulk.status_code == 409
            # Another prefix's topic still takes them.
            other = await app_key.put(f"/v1/topics/other{prefix}{author}/subscribers/reader-1")
            assert other.status_code == 204

        assert (await client.delete(url, headers=admin)).status_code == 204
        assert (await client.delete(url, headers=admin)).status_code == 404
        assert (await client.get(f"{url}/test?key=1", headers=admin)).status_code == 404
        async with api.client("manage") as app_key:
            again = await app_key.put(f"/v1/topics/{prefix}{author}/subscribers/reader-1")
            assert again.status_code == 204


async def test_a_query_that_would_scan_the_table_is_refused_naming_the_scan(
    api: ApiServer,
) -> None:
    admin = {"Authorization": f"Bearer {await admin_key(api)}"}
    unindexed = FOLLOWERS.replace("books.follows", "books.unindexed_follows")
    async with api.client() as client:
        refused = await client.put(
            "/v1/apps/default/sources/scanned:", json={"query": unindexed}, headers=admin
        )
        assert refused.status_code == 422
        detail = refused.json()["detail"][0]
        assert detail["loc"] == ["body", "query"]
        assert "refused: the plan scans the table: Seq Scan on unindexed_follows" in detail["msg"]
        bad_prefix = await client.put(
            "/v1/apps/default/sources/scanned", json={"query": FOLLOWERS}, headers=admin
        )
        assert bad_prefix.status_code == 422
        assert bad_prefix.json()["detail"][0]["loc"][-1] == "prefix"
        unknown_app = await client.get("/v1/apps/no-such-app/sources", headers=admin)
        assert unknown_app.status_code == 404


async def test_without_a_usable_source_role_a_source_is_refused_with_503_naming_it(
    api: ApiServer, tmp_path: Path
) -> None:
    # A second server whose FANOUT_SOURCE_ROLE is fanout's own user (a superuser here): no
    # sandbox, so no source is taken; the shared database's sandbox is left as it is.
    admin = {"Authorization": f"Bearer {await admin_key(api)}"}
    conn = await connect(api.settings.database_dsn())
    try:
        user = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()
    process, url = start_server(api.settings, tmp_path / "server.log", FANOUT_SOURCE_ROLE=user)
    try:
        async with httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as client:
            prefix = f"writer{secrets.token_hex(3)}:"
            put = await client.put(
                f"/v1/apps/default/sources/{prefix}", json={"query": FOLLOWERS, "sample_key": "7"}
            )
    finally:
        stop(process)
    assert put.status_code == 503, put.text
    assert put.json()["detail"].startswith(f"FANOUT_SOURCE_ROLE={user}: ")
