"""Publish options and cancel over the HTTP API (a real server process)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import ApiServer


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"send_at": "2030-01-01T09:00:00"}, "send_at"),  # no offset
        ({"send_at": "soon"}, "send_at"),
        ({"deliver_at_local": "9am"}, "deliver_at_local"),
        ({"deliver_at_local": "24:00"}, "deliver_at_local"),
        ({"quiet_hours": "later"}, "quiet_hours"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),  # past
        ({"send_at": later(days=2), "expires_at": later(days=1)}, "expires_at"),
    ],
)
async def test_bad_publish_options_get_422_naming_the_field(
    api: ApiServer,
    options: dict,  # type: ignore[type-arg]
    field: str,
) -> None:
    body = {"topic": unique("t"), "notification": {"title": "x"}, **options}
    async with api.client("publish") as client:
        response = await client.post("/v1/events", json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"][-1] for e in response.json()["detail"]] == [field]


async def test_a_scheduled_event_is_held_cancelled_and_cancelled_again(api: ApiServer) -> None:
    body = {
        "topic": unique("t"),
        "notification": {"title": "x"},
        "send_at": later(hours=5),
        "deliver_at_local": "09:00",
        "quiet_hours": "drop",
        "expires_at": later(days=2),
        "idempotency_key": unique("k"),
    }
    async with api.client("all") as client:
        published = await client.post("/v1/events", json=body)
        again = await client.post("/v1/events", json=body)
        event = published.json()["event_id"]
        held = (await client.get(f"/v1/events/{event}")).json()
        cancelled = await client.post(f"/v1/events/{event}/cancel")
        twice = await client.post(f"/v1/events/{event}/cancel")
    assert (published.status_code, again.json()) == (202, {"event_id": event, "created": False})
    assert held["status"] == "scheduled"
    assert held["schedule"]["quiet_hours"] == "drop"
    assert held["schedule"]["deliver_at_local"] == "09:00:00"
    assert [w["zones"] for w in held["waves"]] == [["UTC"]]  # nobody has set a zone
    assert cancelled.status_code == twice.status_code == 200
    assert cancelled.json()["status"] == twice.json()["status"] == "cancelled"
    assert cancelled.json()["terminal"] is True


async def test_cancel_needs_the_publish_scope_and_an_existing_event(api: ApiServer) -> None:
    async with api.client("read") as client:
        refused = await client.post("/v1/events/1/cancel")
    async with api.client("publish") as client:
        missing = await client.post("/v1/events/999999999/cancel")
    assert (refused.status_code, missing.status_code) == (403, 404)
