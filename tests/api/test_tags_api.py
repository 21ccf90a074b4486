"""Users' tags and the publish filter over the HTTP API: scopes, the 422 naming the field,
a round trip."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.api.conftest import ApiServer


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.mark.parametrize(
    ("key", "method", "body"), [("read", "PUT", {"plan": "x"}), ("publish", "PUT", {})]
)
async def test_tags_need_their_scope(
    api: ApiServer, key: str, method: str, body: dict[str, Any]
) -> None:
    async with api.client(key) as client:
        response = await client.request(method, "/v1/users/u/tags", json=body)
    assert response.status_code == 403


async def test_tags_round_trip_and_replace_whole(api: ApiServer) -> None:
    user = unique("reader")
    async with api.client("all") as client:
        assert (await client.get(f"/v1/users/{user}/tags")).status_code == 404
        tags = {"plan": "premium", "age": 31, "beta": True, "score": 2.5}
        assert (await client.put(f"/v1/users/{user}/tags", json=tags)).status_code == 204
        got = await client.get(f"/v1/users/{user}/tags")
        assert got.json() == {"user_id": user, "tags": tags}
        await client.put(f"/v1/users/{user}/tags", json={"plan": "free"})
        got = await client.get(f"/v1/users/{user}/tags")
        assert got.json()["tags"] == {"plan": "free"}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"nested": {"a": 1}}, ["body", "nested"]),
        ({"list": [1]}, ["body", "list"]),
        ({"long": "v" * 300}, ["body", "long"]),
        ({f"t{i}": i for i in range(101)}, ["body"]),
        (["plan"], ["body"]),
    ],
)
async def test_bad_tags_get_422_naming_the_field(api: ApiServer, body: Any, loc: list[str]) -> None:
    async with api.client("manage") as client:
        response = await client.put("/v1/users/u/tags", json=body)
    assert response.status_code == 422
    assert any(error["loc"][: len(loc)] == loc for error in response.json()["detail"])


@pytest.mark.parametrize(
    ("filter_", "path"),
    [
        ({"tags": {"age": {"gte": "18"}}}, ["filter", "tags", "age", "gte"]),
        ({"tags": {"plan": {"like": "p"}}}, ["filter", "tags", "plan", "like"]),
        ({"segment": "x"}, ["filter", "segment"]),
        ({"tags": {"country": {"in": []}}}, ["filter", "tags", "country", "in"]),
    ],
)
async def test_a_bad_filter_gets_422_naming_the_field_path(
    api: ApiServer, filter_: dict[str, Any], path: list[str]
) -> None:
    body = {"topic": unique("t"), "notification": {"title": "x"}, "filter": filter_}
    async with api.client("all") as client:
        response = await client.post("/v1/events", json=body)
    assert response.status_code == 422
    locs = [error["loc"] for error in response.json()["detail"]]
    assert any(loc[-len(path) :] == path for loc in locs), locs


async def test_a_publish_with_a_filter_is_accepted(api: ApiServer) -> None:
    body = {
        "topic": unique("t"),
        "notification": {"title": "x"},
        "filter": {"tags": {"plan": "premium", "age": {"gte": 18}}},
    }
    async with api.client("all") as client:
        response = await client.post("/v1/events", json=body)
    assert response.status_code in (201, 202), response.text


async def test_a_filter_alone_publishes_to_the_app_and_nothing_at_all_is_refused(
    api: ApiServer,
) -> None:
    async with api.client("all") as client:
        alone = await client.post(
            "/v1/events",
            json={
                "notification": {"title": "For premium readers"},
                "filter": {"tags": {"plan": "premium"}},
            },
        )
        assert alone.status_code == 202, alone.text
        status = await client.get(f"/v1/events/{alone.json()['event_id']}")
        assert status.status_code == 200
        neither = await client.post("/v1/events", json={"notification": {"title": "To whom?"}})
        assert neither.status_code == 422
        assert neither.json()["detail"][0]["loc"] == ["body", "topic"]
