"""Paced sends over the HTTP API (a real server process): throttle_per_minute on publish,
the app's default (PATCH /v1/apps/{app}, admin only), the status's pacing block."""

from __future__ import annotations

import secrets

import pytest

from fanout.api.keys import create_api_key
from fanout.store import connect
from tests.api.conftest import ApiServer


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def admin_and_app_key(api: ApiServer, app: str) -> tuple[str, str]:
    """An admin key, and after creating ``app`` over the API, a publish+read key of it."""
    conn = await connect(api.settings.database_dsn())
    try:
        admin = (await create_api_key(conn, ["admin"], "pacing-admin"))[1]
    finally:
        await conn.close()
    async with api.client() as client:
        made = await client.post("/v1/apps", json={"key": app}, headers=api_headers(admin))
        assert made.status_code == 201, made.text
    conn = await connect(api.settings.database_dsn())
    try:
        own = (await create_api_key(conn, ["publish", "read"], "pacing", app=app))[1]
    finally:
        await conn.close()
    return admin, own


def api_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("throttle", [0, -5, "fast", 10**8, 1.5])
async def test_a_bad_throttle_gets_422_naming_the_field(api: ApiServer, throttle: object) -> None:
    body = {"topic": unique("t"), "notification": {"title": "x"}, "throttle_per_minute": throttle}
    async with api.client("publish") as client:
        response = await client.post("/v1/events", json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"][-1] for e in response.json()["detail"]] == ["throttle_per_minute"]


async def test_a_paced_event_shows_its_pacing_and_an_unpaced_one_none(api: ApiServer) -> None:
    topic = unique("t")
    async with api.client("all") as client:
        paced = await client.post(
            "/v1/events",
            json={"topic": topic, "notification": {"title": "x"}, "throttle_per_minute": 600},
        )
        plain = await client.post(
            "/v1/events", json={"topic": topic, "notification": {"title": "x"}}
        )
        assert paced.status_code == plain.status_code == 202, paced.text
        shown = (await client.get(f"/v1/events/{paced.json()['event_id']}")).json()
        unpaced = (await client.get(f"/v1/events/{plain.json()['event_id']}")).json()
    assert shown["pacing"]["throttle_per_minute"] == 600
    assert set(shown["pacing"]) == {
        "throttle_per_minute",
        "sent",
        "scheduled",
        "expected_end",
        "final",
    }
    assert unpaced["pacing"] is None


async def test_an_apps_default_throttle_is_set_by_an_admin_and_taken_by_its_events(
    api: ApiServer,
) -> None:
    app = unique("pace")
    admin, own = await admin_and_app_key(api, app)
    async with api.client() as client:
        refused = await client.patch(
            f"/v1/apps/{app}", json={"default_throttle_per_minute": 60}, headers=api_headers(own)
        )
        assert refused.status_code == 403, refused.text
        bad = await client.patch(
            f"/v1/apps/{app}", json={"default_throttle_per_minute": 0}, headers=api_headers(admin)
        )
        assert bad.status_code == 422, bad.text
        assert bad.json()["detail"][0]["loc"] == ["body", "default_throttle_per_minute"]
        unknown = await client.patch(
            f"/v1/apps/{unique('none')}",
            json={"default_throttle_per_minute": 60},
            headers=api_headers(admin),
        )
        assert unknown.status_code == 404
        set_ = await client.patch(
            f"/v1/apps/{app}",
            json={"default_throttle_per_minute": 1200},
            headers=api_headers(admin),
        )
        assert set_.status_code == 200, set_.text
        assert set_.json()["default_throttle_per_minute"] == 1200
        untouched = await client.patch(f"/v1/apps/{app}", json={}, headers=api_headers(admin))
        assert untouched.json()["default_throttle_per_minute"] == 1200

        body = {"topic": unique("t"), "notification": {"title": "x"}}
        inherited = await client.post("/v1/events", json=body, headers=api_headers(own))
        own_rate = await client.post(
            "/v1/events", json={**body, "throttle_per_minute": 90}, headers=api_headers(own)
        )
        first = (
            await client.get(f"/v1/events/{inherited.json()['event_id']}", headers=api_headers(own))
        ).json()
        second = (
            await client.get(f"/v1/events/{own_rate.json()['event_id']}", headers=api_headers(own))
        ).json()
        assert first["pacing"]["throttle_per_minute"] == 1200
        assert second["pacing"]["throttle_per_minute"] == 90

        cleared = await client.patch(
            f"/v1/apps/{app}",
            json={"default_throttle_per_minute": None},
            headers=api_headers(admin),
        )
        assert cleared.json()["default_throttle_per_minute"] is None
        after = await client.post(
            "/v1/events", json=body | {"topic": unique("t")}, headers=api_headers(own)
        )
        shown = (
            await client.get(f"/v1/events/{after.json()['event_id']}", headers=api_headers(own))
        ).json()
        assert shown["pacing"] is None
