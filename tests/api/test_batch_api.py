"""POST /v1/notifications/batch and group commit, over a real server, PostgreSQL and SQS."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from fanout.local.sink import EmbeddedSink, PushSink
from fanout.runtime.worker import run_worker
from fanout.store import connect
from tests.api.conftest import ApiServer
from tests.api.test_api import wait_for_status
from tests.helpers import sink_pipeline


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
async def worker(api: ApiServer) -> AsyncIterator[EmbeddedSink]:
    async with EmbeddedSink(PushSink()) as sink, sink_pipeline(api.settings, sink.url) as pipeline:
        stopping = asyncio.Event()
        task = asyncio.create_task(run_worker(api.settings, stopping, pipeline=pipeline))
        yield sink
        stopping.set()
        await task


async def events_users(api: ApiServer, ids: list[int]) -> dict[int, str]:
    conn = await connect(api.settings.database_dsn())
    try:
        rows = await conn.fetch(
            """SELECT e.id, u.external_id FROM events e JOIN users u ON u.id = e.user_id
               WHERE e.id = ANY($1::bigint[])""",
            ids,
        )
    finally:
        await conn.close()
    return {row["id"]: row["external_id"] for row in rows}


async def test_each_item_is_its_own_event_and_a_bad_one_is_refused_by_index(
    api: ApiServer,
) -> None:
    run = unique("b")
    items = [
        {"user_id": f"{run}-0", "notification": {"title": "Anna liked your review"}},
        {"user_id": f"{run}-1"},  # no notification
        {"user_id": "not a user id!", "notification": {"title": "x"}},
        {"user_id": f"{run}-3", "notification": {"title": "x", "data": {"n": 1}}},  # not a string
        "not an object",
        {"user_id": f"{run}-5", "notification": {"title": "Your order shipped"}},
        {"user_id": f"{run}-6", "notification": {"title": "x"}, "expires_at": "2001-01-01T00:00Z"},
    ]
    async with api.client("publish") as client:
        answer = await client.post("/v1/notifications/batch", json={"items": items})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["accepted"], body["refused"]) == (2, 5)
    results = body["results"]
    assert len(results) == len(items)
    for index in (0, 5):
        assert results[index]["event_id"] and results[index]["created"] is True
        assert results[index]["errors"] is None
    locs = {i: [e["loc"] for e in results[i]["errors"]] for i in (1, 2, 3, 4, 6)}
    assert locs[1] == [["body", "items", 1, "notification"]]
    assert locs[2] == [["body", "items", 2, "user_id"]]
    assert locs[3][0][:5] == ["body", "items", 3, "notification", "data"]
    assert locs[4] == [["body", "items", 4]]
    assert locs[6] == [["body", "items", 6, "expires_at"]]
    assert "not a user id" not in answer.text  # no value echoed
    ids = [results[0]["event_id"], results[5]["event_id"]]
    assert await events_users(api, ids) == {ids[0]: f"{run}-0", ids[1]: f"{run}-5"}


async def test_a_batch_with_no_good_item_is_422_and_the_envelope_is_checked(
    api: ApiServer,
) -> None:
    async with api.client("publish") as client:
        none_good = await client.post(
            "/v1/notifications/batch", json={"items": [{"user_id": "u"}, {"notification": {}}]}
        )
        empty = await client.post("/v1/notifications/batch", json={"items": []})
        too_many = await client.post(
            "/v1/notifications/batch",
            json={"items": [{"user_id": "u", "notification": {"title": "x"}}] * 1001},
        )
        not_a_list = await client.post("/v1/notifications/batch", json={"items": {"a": 1}})
        extra = await client.post("/v1/notifications/batch", json={"items": [], "other": 1})
    assert none_good.status_code == 422
    assert {tuple(e["loc"][:3]) for e in none_good.json()["detail"]} == {
        ("body", "items", 0),
        ("body", "items", 1),
    }
    for refused in (empty, too_many, not_a_list):
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "items"]
    assert extra.status_code == 422 and extra.json()["detail"][0]["loc"] == ["body", "other"]


async def test_idempotency_keys_within_a_batch_and_across_batches(api: ApiServer) -> None:
    run = unique("k")
    item = {"user_id": f"{run}-u", "notification": {"title": "x"}, "idempotency_key": run}
    other = {**item, "notification": {"title": "y"}}
    async with api.client("publish") as client:
        first = await client.post("/v1/notifications/batch", json={"items": [item, item, other]})
        again = await client.post("/v1/notifications/batch", json={"items": [item, other]})
        single = await client.post(
            f"/v1/users/{run}-u/notifications",
            json={"notification": {"title": "x"}, "idempotency_key": run},
        )
    one, same, conflict = first.json()["results"]
    assert one["created"] and same == {**one, "created": False}
    assert conflict["errors"][0]["loc"] == ["body", "items", 2, "idempotency_key"]
    assert conflict["errors"][0]["type"] == "conflict"
    assert again.json()["results"][0] == {**one, "created": False}
    assert again.json()["results"][1]["errors"][0]["type"] == "conflict"
    # A 1:1 send with the same key and request is the same event (the same fingerprint).
    assert single.status_code == 202 and single.json()["event_id"] == one["event_id"]


async def test_a_held_item_is_scheduled_and_the_rest_go_now(api: ApiServer) -> None:
    run = unique("h")
    items = [
        {"user_id": f"{run}-0", "notification": {"title": "x"}, "send_at": "2099-01-01T00:00:00Z"},
        {"user_id": f"{run}-1", "notification": {"title": "x"}},
    ]
    async with api.client("all") as client:
        answer = await client.post("/v1/notifications/batch", json={"items": items})
        held, now = (r["event_id"] for r in answer.json()["results"])
        assert (await client.get(f"/v1/events/{held}")).json()["status"] == "scheduled"
        assert (await client.get(f"/v1/events/{now}")).json()["status"] != "scheduled"


async def test_concurrent_one_to_one_sends_are_each_answered_with_their_own_event(
    api: ApiServer,
) -> None:
    run = unique("c")
    users = [f"{run}-{i}" for i in range(30)]  # within the test server's burst of 40
    async with api.client("all") as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/v1/users/{user}/notifications", json={"notification": {"title": user}}
                )
                for user in users
            )
        )
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
    ids = [a.json()["event_id"] for a in answers]
    assert await events_users(api, ids) == dict(zip(ids, users, strict=True))


async def test_every_item_reaches_its_own_users_devices_and_no_other(
    api: ApiServer, worker: EmbeddedSink
) -> None:
    run = unique("d")
    users = [f"{run}-{i}" for i in range(12)]
    async with api.client("all") as client:
        devices: dict[str, list[str]] = {}
        for i, user in enumerate(users):
            for _ in range(1 + i % 3):
                token = unique("fcm")
                added = await client.post(
                    "/v1/devices", json={"user_id": user, "platform": "fcm", "token": token}
                )
                devices.setdefault(user, []).append(str(added.json()["id"]))
        items = [{"user_id": u, "notification": {"title": f"for {u}"}} for u in users]
        answer = await client.post("/v1/notifications/batch", json={"items": items})
        ids = [r["event_id"] for r in answer.json()["results"]]
        for event_id, user in zip(ids, users, strict=True):
            status = await wait_for_status(client, event_id)
            assert status["sent"] == len(devices[user])
    counted = worker.sink.ledger.events()
    for event_id, user in zip(ids, users, strict=True):
        assert counted[str(event_id)].unique == len(devices[user])


async def test_the_batch_route_is_documented(api: ApiServer) -> None:
    async with api.client() as client:
        document = (await client.get("/openapi.json")).json()
    route = document["paths"]["/v1/notifications/batch"]["post"]
    schema = route["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("NotificationBatchIn")
    items = document["components"]["schemas"]["NotificationBatchIn"]["properties"]["items"]
    assert items["maxItems"] == 1000 and items["items"]["$ref"].endswith("BatchNotificationIn")
