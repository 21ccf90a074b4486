"""POST /v1/opens through `fanout serve` and PostgreSQL: a token counts once however often
and however concurrently it is posted; forged tokens, tokens of another event and tokens
replayed after the event's open window are never counted, and the answer never says
whether an event exists."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from fanout.open_tokens import OpenTokens
from fanout.store import connect
from tests.api.conftest import ApiServer, start_server
from tests.processes import stop

KEY = "opens-test-key-" + "k" * 32
TOKENS = OpenTokens(KEY.encode())


@dataclass
class OpensServer:
    url: str
    api: ApiServer  # the shared server's database and keys
    log: Path

    def problems(self) -> str:
        """What the server said besides 202s and 422s: what a failed assertion shows."""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if " 202 " not in line and " 422 " not in line)

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = self.api.headers(key) if key else {}
        limits = httpx.Limits(max_connections=50)
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60, limits=limits)


@pytest.fixture(scope="module")
def opens_api(api: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpensServer]:
    """A second `fanout serve` on the shared database, with opens on."""
    log = tmp_path_factory.mktemp("opens") / "server.log"
    process, url = start_server(
        api.settings,
        log,
        FANOUT_OPEN_TOKEN_KEY=KEY,
        FANOUT_OPENS_PER_MINUTE_PER_ADDRESS="100000000",
    )
    try:
        yield OpensServer(url, api, log)
    finally:
        stop(process)


async def _event(server: OpensServer) -> int:
    async with server.client("publish") as client:
        response = await client.post(
            "/v1/events",
            json={"topic": f"opens-{secrets.token_hex(4)}", "notification": {"title": "t"}},
        )
    assert response.status_code == 202, response.text
    event_id: int = response.json()["event_id"]
    return event_id


async def _devices(conn: asyncpg.Connection, count: int) -> list[tuple[int, str]]:
    """``count`` devices of new users of the default app, apns, fcm and webpush in turn."""
    run = secrets.token_hex(4)
    rows = await conn.fetch(
        """WITH u AS (
               INSERT INTO users (app_id, external_id)
               SELECT 1, $1 || '-' || i FROM generate_series(1, $2) AS i RETURNING id
           ), p AS (SELECT id, (ARRAY['apns', 'fcm', 'webpush'])[1 + id % 3] AS platform FROM u)
           INSERT INTO devices (app_id, user_id, platform, token, web_push_p256dh,
                                web_push_auth, locale)
           SELECT 1, id, platform, 'https://push.example/' || $1 || '-' || id,
                  CASE WHEN platform = 'webpush' THEN 'BPUB' END,
                  CASE WHEN platform = 'webpush' THEN 'AUTH' END, 'en'
           FROM p
           RETURNING id, platform""",
        run,
        count,
    )
    return [(row["id"], row["platform"]) for row in rows]


async def _opened(conn: asyncpg.Connection, event_id: int) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM opens WHERE event_id = $1", event_id)
    return count


async def _status(server: OpensServer, event_id: int) -> dict[str, object]:
    async with server.client("read") as client:
        response = await client.get(f"/v1/events/{event_id}")
    assert response.status_code == 200, response.text
    opens: dict[str, object] = response.json()["opens"]
    return opens


async def test_10000_concurrent_opens_of_5000_devices_count_5000(opens_api: OpensServer) -> None:
    conn = await connect(opens_api.api.settings.database_dsn())
    try:
        event_id = await _event(opens_api)
        devices = await _devices(conn, 5000)
        minter = TOKENS.for_event(event_id)
        posts = [minter.token(device_id) for device_id, _ in devices] * 2
        answers: list[int] = []
        gate = asyncio.Semaphore(50)

        async with opens_api.client() as client:

            async def post(token: str) -> None:
                async with gate:
                    # As an app does: a post whose connection the server had just closed
                    # (its keep-alive timeout, which a loaded machine makes likelier) is sent
                    # again; posting a token twice is what this test says is harmless.
                    for tries_left in reversed(range(3)):
                        try:
                            response = await client.post("/v1/opens", json={"token": token})
                            break
                        except httpx.TransportError:
                            if not tries_left:
                                raise
                answers.append(response.status_code)

            await asyncio.gather(*(post(token) for token in posts))
        assert Counter(answers) == {202: 10_000}, opens_api.problems()
        assert await _opened(conn, event_id) == 5000
        opens = await _status(opens_api, event_id)
        assert opens["opened"] == 5000
        by_provider = opens["by_provider"]
        assert isinstance(by_provider, dict)
        per_platform = {p: sum(1 for _, q in devices if q == p) for p in ("apns", "fcm", "webpush")}
        assert {p: v["opened"] for p, v in by_provider.items()} == per_platform
        time_to_open = opens["time_to_open"]
        assert isinstance(time_to_open, dict)
        assert sum(time_to_open["buckets"].values()) == 5000
        assert time_to_open["p50_seconds"] is not None
    finally:
        await conn.close()


async def test_forged_other_event_and_late_tokens_are_never_counted(
    opens_api: OpensServer,
) -> None:
    conn = await connect(opens_api.api.settings.database_dsn())
    try:
        event, other, late = [await _event(opens_api) for _ in range(3)]
        [(device, _)] = await _devices(conn, 1)
        await conn.execute(
            "UPDATE events SET created_at = now() - interval '31 days' WHERE id = $1", late
        )
        genuine = TOKENS.token(event, device)
        body = bytearray(base64.urlsafe_b64decode(genuine + "="))
        body[1:9] = other.to_bytes(8)  # the same token, claiming the other event
        other_events = base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
        forged = OpenTokens(b"not the server's key, 32 bytes!!").token(event, device)
        async with opens_api.client() as client:
            for token in (forged, other_events, "x" * 44, "short"):
                response = await client.post("/v1/opens", json={"token": token})
                assert response.status_code == 422, response.text
                assert response.json()["detail"][0]["loc"] == ["body", "token"]
            # A genuine token past its event's window, and one of an event that never was:
            # accepted as a counted one is, never counted.
            never = TOKENS.token(2**62, device)
            answers = {
                token: await client.post("/v1/opens", json={"token": token})
                for token in (TOKENS.token(late, device), never, genuine)
            }
        assert {r.status_code for r in answers.values()} == {202}
        assert len({r.content for r in answers.values()}) == 1  # nothing tells them apart
        assert (await _opened(conn, event), await _opened(conn, other)) == (1, 0)
        assert await _opened(conn, late) == 0
        assert (await _status(opens_api, other))["opened"] == 0
    finally:
        await conn.close()


async def test_a_click_is_recorded_per_action_and_the_first_report_is_the_open(
    opens_api: OpensServer,
) -> None:
    conn = await connect(opens_api.api.settings.database_dsn())
    try:
        event = await _event(opens_api)
        [(device, platform)] = await _devices(conn, 1)
        token = TOKENS.token(event, device)
        async with opens_api.client() as client:
            for action in ("reply", "reply", "like", None):
                response = await client.post("/v1/opens", json={"token": token, "action": action})
                assert response.status_code == 202, response.text
            bad = await client.post("/v1/opens", json={"token": token, "action": "no spaces"})
            assert bad.status_code == 422
            assert bad.json()["detail"][0]["loc"] == ["body", "action"]
        opens = await _status(opens_api, event)
        assert opens["opened"] == 1
        assert opens["clicks"] == {"reply": 1, "like": 1}
        assert await conn.fetchval("SELECT action FROM opens WHERE event_id = $1", event) == "reply"
        assert platform in opens["by_provider"]  # type: ignore[operator]
    finally:
        await conn.close()


async def test_opens_are_off_without_a_key(
    api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A server with neither FANOUT_OPEN_TOKEN_KEY nor FANOUT_SECRET_KEY."""
    log = tmp_path_factory.mktemp("opens-off") / "server.log"
    process, url = start_server(api.settings, log)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await client.post("/v1/opens", json={"token": TOKENS.token(1, 1)})
    finally:
        stop(process)
    assert response.status_code == 404
    assert "FANOUT_OPEN_TOKEN_KEY" in response.json()["detail"]


async def test_the_service_worker_is_served(opens_api: OpensServer) -> None:
    async with opens_api.client() as client:
        response = await client.get("/sdk/fanout-sw.js")
        preflight = await client.options("/v1/opens")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "notificationclick" in response.text and "/v1/opens" in response.text
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"


async def test_opens_are_rate_limited_per_address(
    api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log = tmp_path_factory.mktemp("opens-limited") / "server.log"
    process, url = start_server(
        api.settings, log, FANOUT_OPEN_TOKEN_KEY=KEY, FANOUT_OPENS_PER_MINUTE_PER_ADDRESS="6"
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            token = TOKENS.token(2**62, 1)
            first = await client.post("/v1/opens", json={"token": token})
            second = await client.post("/v1/opens", json={"token": token})
        assert first.status_code == 202
        assert second.status_code == 429
        assert int(second.headers["retry-after"]) >= 1
    finally:
        stop(process)
