"""Audience controls over the HTTP API: preferences (one user and in bulk), topic mutes,
frequency caps; their scopes, their validation, and their effect on a publish.

The API server's database lives the whole session: caps here are on categories of this
module's own, so that no other test's pushes are capped.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from fanout.local.sink import EmbeddedSink
from tests.api.conftest import ApiServer
from tests.api.test_api import wait_for_status, worker  # noqa: F401 (worker: a fixture)


def capped_total() -> float:
    """Every app's recipients held back as capped (the counter is labelled by app)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == "fanout_audience_held_back_total" and sample.labels["reason"] == "capped"
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


NEW_PATHS = [
    ("PUT", "/v1/users/u/preferences"),
    ("GET", "/v1/users/u/preferences"),
    ("POST", "/v1/preferences"),
    ("PUT", "/v1/users/u/mutes/t"),
    ("DELETE", "/v1/users/u/mutes/t"),
    ("GET", "/v1/frequency-caps"),
    ("PUT", "/v1/frequency-caps/news"),
    ("DELETE", "/v1/frequency-caps/news"),
]


@pytest.mark.parametrize(("method", "path"), NEW_PATHS)
async def test_every_audience_path_needs_a_key(api: ApiServer, method: str, path: str) -> None:
    async with api.client() as client:
        response = await client.request(method, path, json={})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("key", "method", "path", "body"),
    [
        ("read", "PUT", "/v1/users/u/preferences", {}),
        ("publish", "PUT", "/v1/users/u/preferences", {}),
        ("manage", "GET", "/v1/users/u/preferences", None),
        ("read", "POST", "/v1/preferences", {"items": [{"user_id": "u"}]}),
        ("read", "PUT", "/v1/users/u/mutes/t", None),
        ("read", "DELETE", "/v1/users/u/mutes/t", None),
        ("manage", "GET", "/v1/frequency-caps", None),
        ("read", "PUT", "/v1/frequency-caps/news", {"max": 1, "window_seconds": 60}),
        ("read", "DELETE", "/v1/frequency-caps/news", None),
    ],
)
async def test_audience_paths_need_their_scope(
    api: ApiServer, key: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with api.client(key) as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == 403
    assert "scope" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
        ({"quiet_hours": "25:00-08:00"}, "quiet_hours"),
        ({"quiet_hours": "22:00"}, "quiet_hours"),
        ({"opted_out": "maybe"}, "opted_out"),
        ({"opted_out_categories": ["News!"]}, "opted_out_categories"),
        ({"opted_out_categories": ["*"]}, "opted_out_categories"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_preferences_get_422_naming_the_field(
    api: ApiServer, body: dict[str, Any], field: str
) -> None:
    async with api.client("manage") as client:
        response = await client.put("/v1/users/u/preferences", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == field or field in error["loc"]
    # The bad value is not echoed back.
    for value in body.values():
        if isinstance(value, str):
            assert value not in response.text


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/preferences", {"items": [{"time_zone": "UTC"}]}, "user_id"),
        ("POST", "/v1/preferences", {"items": []}, "items"),
        ("PUT", "/v1/users/u/mutes/t", {"until": "2030-01-01T00:00:00"}, "until"),
        ("PUT", "/v1/frequency-caps/news", {"max": 0, "window_seconds": 60}, "max"),
        ("PUT", "/v1/frequency-caps/news", {"max": 1, "window_seconds": 0}, "window_seconds"),
        ("PUT", "/v1/frequency-caps/News", {"max": 1, "window_seconds": 60}, "category"),
        (
            "POST",
            "/v1/events",
            {"topic": "t", "notification": {"title": "x", "category": "A B"}},
            "category",
        ),
    ],
)
async def test_bad_audience_requests_get_422_naming_the_field(
    api: ApiServer, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    async with api.client("all") as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == 422
    assert any(field in error["loc"] for error in response.json()["detail"])


async def test_preferences_round_trip_and_default_when_unset(api: ApiServer) -> None:
    user, plain, topic = unique("reader"), unique("reader"), unique("topic")
    async with api.client("all") as client:
        assert (await client.get(f"/v1/users/{user}/preferences")).status_code == 404
        await client.put(f"/v1/topics/{topic}/subscribers/{plain}")
        put = await client.put(
            f"/v1/users/{user}/preferences",
            json={
                "time_zone": "America/New_York",
                "quiet_hours": "22:00-07:30",
                "opted_out_categories": ["sports", "news", "sports"],
            },
        )
        mute = await client.put(
            f"/v1/users/{user}/mutes/{topic}", json={"until": "2099-01-01T00:00:00+02:00"}
        )
        shown = (await client.get(f"/v1/users/{user}/preferences")).json()
        default = (await client.get(f"/v1/users/{plain}/preferences")).json()
        await client.delete(f"/v1/users/{user}/mutes/{topic}")
        unmuted = (await client.get(f"/v1/users/{user}/preferences")).json()

    assert (put.status_code, mute.status_code) == (204, 204)
    assert shown == {
        "user_id": user,
        "time_zone": "America/New_York",
        "quiet_hours": "22:00-07:30",
        "opted_out": False,
        "opted_out_categories": ["news", "sports"],
        "mutes": [{"topic": topic, "until": "2098-12-31T22:00:00Z"}],
    }
    assert default == {
        "user_id": plain,
        "time_zone": None,
        "quiet_hours": None,
        "opted_out": False,
        "opted_out_categories": [],
        "mutes": [],
    }
    assert unmuted["mutes"] == []


async def test_bulk_preferences_write_each_user_once_the_last_item_winning(
    api: ApiServer,
) -> None:
    users = [unique("bulk") for _ in range(3)]
    items = [
        {"user_id": users[0], "opted_out": True},
        {"user_id": users[1], "time_zone": "Asia/Kolkata", "quiet_hours": "23:00-06:00"},
        {"user_id": users[2], "opted_out_categories": ["promo"]},
        {"user_id": users[0], "opted_out": False, "time_zone": "UTC"},
    ]
    async with api.client("all") as client:
        response = await client.post("/v1/preferences", json={"items": items})
        first = (await client.get(f"/v1/users/{users[0]}/preferences")).json()
        second = (await client.get(f"/v1/users/{users[1]}/preferences")).json()
    assert response.json() == {"requested": 4, "updated": 3}
    assert (first["opted_out"], first["time_zone"]) == (False, "UTC")
    assert second["quiet_hours"] == "23:00-06:00"


async def test_frequency_caps_are_created_updated_listed_and_deleted(api: ApiServer) -> None:
    category = unique("digest")
    async with api.client("all") as client:
        created = await client.put(
            f"/v1/frequency-caps/{category}", json={"max": 3, "window_seconds": 86400}
        )
        updated = await client.put(
            f"/v1/frequency-caps/{category}", json={"max": 2, "window_seconds": 3600}
        )
        listed = (await client.get("/v1/frequency-caps")).json()
        deleted = await client.delete(f"/v1/frequency-caps/{category}")
        again = await client.delete(f"/v1/frequency-caps/{category}")
    assert (created.status_code, updated.status_code) == (201, 200)
    assert updated.json()["max"] == 2 and updated.json()["window_seconds"] == 3600
    assert [c["max"] for c in listed if c["category"] == category] == [2]
    assert (deleted.status_code, again.status_code) == (204, 404)


async def test_a_publish_skips_opted_out_muted_and_capped_users_and_says_so(
    api: ApiServer,
    worker: EmbeddedSink,  # noqa: F811
) -> None:
    capped_before = capped_total()
    topic, category = unique("author"), unique("alerts")
    readers = [f"{topic}-r{i}" for i in range(12)]
    async with api.client("all") as client:
        for reader in readers:
            await client.put(f"/v1/topics/{topic}/subscribers/{reader}")
            await client.post(
                "/v1/devices", json={"user_id": reader, "platform": "fcm", "token": unique("f")}
            )
        await client.post(
            "/v1/preferences",
            json={
                "items": [
                    {"user_id": readers[0], "opted_out": True},
                    {"user_id": readers[1], "opted_out_categories": [category]},
                ]
            },
        )
        await client.put(f"/v1/users/{readers[2]}/mutes/{topic}")
        await client.put(f"/v1/frequency-caps/{category}", json={"max": 1, "window_seconds": 600})
        note = {"title": "Alert", "category": category}
        first = await client.post("/v1/events", json={"topic": topic, "notification": note})
        one = await wait_for_status(client, first.json()["event_id"])
        second = await client.post("/v1/events", json={"topic": topic, "notification": note})
        two = await wait_for_status(client, second.json()["event_id"], "no_recipients")
        await client.delete(f"/v1/frequency-caps/{category}")

    assert (one["sent"], one["held_back"]) == (9, {"opted_out": 2, "muted": 1})
    assert (two["sent"], two["held_back"]) == (0, {"opted_out": 2, "muted": 1, "capped": 9})
    # These events' pushes only: the session's worker also delivers what earlier tests left
    # on the API's queues (the OpenAPI fuzz's Live Activity updates).
    pushed = worker.sink.ledger.events()
    assert pushed[str(one["event_id"])].unique == 9 and str(two["event_id"]) not in pushed
    # `fanout status` prints the same counts.
    shown = subprocess.run(
        [sys.executable, "-m", "fanout", "status", str(two["event_id"])],
        env={**os.environ, "FANOUT_DATABASE_URL": api.settings.database_dsn()},
        capture_output=True,
        text=True,
        check=True,
    )
    assert orjson.loads(shown.stdout)["held_back"] == two["held_back"]
    # The fan-out ran in this process (the worker fixture): its counter moved.
    assert capped_total() - capped_before == 9
