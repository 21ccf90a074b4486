"""Publishing each kind through the API: what is accepted, and every refusal a 422
naming the field (the wire form is in tests/providers/test_kinds.py and, for Live
Activities, tests/providers/test_live_activities.py)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.api.conftest import ApiServer

BIG = "x" * 4000


@pytest.mark.parametrize(
    "notification",
    [
        {"title": "t"},
        {"kind": "alert", "title": "t", "subtitle": "s", "thread_id": "th",
         "interruption_level": "time-sensitive", "relevance_score": 0.5,
         "action_category": "C", "actions": [{"id": "a", "title": "A"}], "mutable_content": True},
        {"kind": "background"},
        {"kind": "background", "data": {"sync": "1"}, "priority": "normal",
         "apns": {"headers": {"apns-priority": "5"}, "payload": {"extra": {"n": 1}}},
         "fcm": {"android": {"direct_boot_ok": True}}, "webpush": {"headers": {"Urgency": "low"}}},
    ],
)  # fmt: skip
async def test_each_kind_is_accepted(api: ApiServer, notification: dict[str, Any]) -> None:
    body = {"topic": f"kinds-{secrets.token_hex(4)}", "notification": notification}
    async with api.client("publish") as client:
        response = await client.post("/v1/events", json=body)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("notification", "loc", "says"),
    [
        ({"body": "b"}, ["title"], "required for an alert"),
        ({"kind": "voip", "title": "t"}, ["kind"], "'alert', 'background' or 'liveactivity'"),
        ({"kind": "liveactivity", "live_activity": {"event": "end"}}, ["kind"],
         "POST /v1/live-activities/{activity_id}/updates"),
        ({"kind": "background", "title": "t"}, ["title"], "background push shows nothing"),
        ({"kind": "background", "badge": 1}, ["badge"], "background push shows nothing"),
        ({"title": "t", "data": {"count": 3}}, ["data", "count"], "must be strings"),
        ({"title": "t", "data": {"from": "x"}}, ["data", "from"], "FCM reserves"),
        ({"title": "t", "interruption_level": "loud"}, ["interruption_level"], "'passive'"),
        ({"title": "t", "relevance_score": 2}, ["relevance_score"], "less than or equal to 1"),
        ({"title": "t", "actions": [{"id": "a", "title": "A"}] * 3}, ["actions"], "at most 2"),
        ({"title": "t", "apns": {"headers": {"authorization": "bearer x"}}},
         ["apns", "headers", "authorization"], "authorization cannot be set"),
        ({"title": "t", "apns": {"headers": {"apns-topic": "com.other"}}},
         ["apns", "headers", "apns-topic"], "FANOUT_APNS_TOPIC"),
        ({"title": "t", "webpush": {"headers": {"Content-Encoding": "aesgcm"}}},
         ["webpush", "headers", "content-encoding"], "aes128gcm"),
        ({"title": "t", "fcm": {"token": "someone-else"}}, ["fcm", "token"], "Extra inputs"),
        ({"title": "t", "fcm": {"android": {"data": {"n": 1}}}},
         ["fcm", "android", "data", "n"], "must be strings"),
        ({"title": "t", "apns": {"payload": []}}, ["apns", "payload"], "dictionary"),
        ({"kind": "background", "apns": {"headers": {"apns-priority": "10"}}},
         ["apns", "headers", "apns-priority"], "priority 10"),
        ({"kind": "background", "apns": {"payload": {"aps": {"alert": "hi"}}}},
         ["apns", "payload", "aps", "alert"], "no alert, sound or badge"),
        ({"kind": "background", "fcm": {"android": {"notification": {"title": "t"}}}},
         ["fcm", "android", "notification"], "data message"),
        # Each platform's final payload, overrides merged, against its own limit.
        ({"title": "t", "apns": {"payload": {"blob": BIG, "more": BIG[:200]}}}, ["apns"],
         "the APNs payload with its open token renders to 4318 bytes (locale default); the limit is 4096 bytes"),
        ({"title": "t", "webpush": {"payload": {"blob": BIG}}}, ["webpush"],
         "the Web Push payload with its open token, encrypted, renders to 4285 bytes"),
        ({"title": "t", "data": {"a": BIG + "x" * 96}}, ["fcm"],
         "the FCM notification and data with the open token renders to 4209 bytes"),
        # Apple grants critical alerts per app; this server has not been told it may.
        ({"title": "t", "interruption_level": "critical"}, ["interruption_level"],
         "FANOUT_APNS_ALLOW_CRITICAL"),
    ],
)  # fmt: skip
async def test_a_refused_notification_is_a_422_naming_the_field(
    api: ApiServer, notification: dict[str, Any], loc: list[str], says: str
) -> None:
    body = {"topic": f"kinds-{secrets.token_hex(4)}", "notification": notification}
    async with api.client("publish") as client:
        response = await client.post("/v1/events", json=body)
    assert response.status_code == 422
    found = {tuple(p["loc"]): p["msg"] for p in response.json()["detail"]}
    assert ("body", "notification", *loc) in found, found
    assert says in found[("body", "notification", *loc)]
    assert "xxxx" not in response.text and "someone-else" not in response.text


async def test_a_one_to_one_send_is_held_to_the_same_rules(api: ApiServer) -> None:
    async with api.client("publish") as client:
        response = await client.post(
            f"/v1/users/reader-{secrets.token_hex(4)}/notifications",
            json={"notification": {"kind": "background", "data": {"n": 1}}},
        )
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "notification", "data", "n"]


# --- Live Activities ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"event": "pause", "content_state": {}}, ["event"], "'start', 'update' or 'end'"),
        ({"event": "update", "content_state": "1-0"}, ["content_state"], "dictionary"),
        ({"event": "update"}, ["content_state"], "Field required for update"),
        ({"event": "start", "content_state": {}}, ["attributes_type"], "required for start"),
        ({"event": "start", "content_state": {}, "attributes_type": "A"}, ["attributes"],
         "required for start"),
        ({"event": "update", "content_state": {}, "dismissal_date": "2030-01-01T00:00:00Z"},
         ["dismissal_date"], "only an end is dismissed"),
        ({"event": "update", "content_state": {}, "attributes": {}}, ["attributes"],
         "only a start"),
        ({"event": "update", "content_state": {}, "priority": 7}, ["priority"], "5 or 10"),
        ({"event": "end", "alert": {"body": "b"}}, ["alert", "title"], "Field required"),
        ({"event": "end", "stale_date": "2030-01-01T00:00:00"}, ["stale_date"], "timezone"),
        ({"event": "update", "content_state": {"blob": "x" * 5000}}, ["content_state"],
         "the limit is 4096 bytes"),
        ({"event": "end", "title": "t"}, ["title"], "Extra inputs"),
    ],
)  # fmt: skip
async def test_a_refused_live_activity_update_is_a_422_naming_the_field(
    api: ApiServer, body: dict[str, Any], loc: list[str], says: str
) -> None:
    async with api.client("publish") as client:
        answer = await client.post("/v1/live-activities/match-1/updates", json=body)
    assert answer.status_code == 422, answer.text
    found = {tuple(p["loc"]): p["msg"] for p in answer.json()["detail"]}
    assert ("body", *loc) in found, found
    assert says in found[("body", *loc)]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"user_id": "u", "token": "not-hex"}, ["token"]),
        ({"user_id": "u", "token": "ab" * 32, "kind": "voip"}, ["kind"]),
        ({"user_id": "u", "token": "ab" * 32, "topic": "bad topic"}, ["topic"]),
        ({"user_id": "u", "token": "ab" * 32, "apns_environment": "dev"}, ["apns_environment"]),
    ],
)
async def test_a_refused_live_activity_token_is_a_422_naming_the_field(
    api: ApiServer, body: dict[str, Any], loc: list[str]
) -> None:
    async with api.client("manage") as client:
        answer = await client.post("/v1/live-activities/match-1/tokens", json=body)
    assert answer.status_code == 422, answer.text
    assert ["body", *loc] in [p["loc"] for p in answer.json()["detail"]]


async def test_a_live_activity_update_is_published_at_most_once_per_idempotency_key(
    api: ApiServer,
) -> None:
    activity = f"/v1/live-activities/match-{secrets.token_hex(4)}/updates"
    body = {"event": "update", "content_state": {"n": 1}, "idempotency_key": "goal-1"}
    async with api.client("publish") as client:
        first = await client.post(activity, json=body)
        again = await client.post(activity, json=body)
        other = await client.post(activity, json={**body, "content_state": {"n": 2}})
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["created"] and not again.json()["created"]
    assert again.json()["event_id"] == first.json()["event_id"]
    assert other.status_code == 409 and "idempotency_key" in other.text
