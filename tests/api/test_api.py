"""The HTTP API over a real server process, PostgreSQL and SQS."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fanout.api.keys import create_api_key, revoke_api_key, split_token
from fanout.local.sink import EmbeddedSink, PushSink
from fanout.runtime.worker import run_worker
from fanout.store import connect
from tests.api.conftest import ApiServer, start_server
from tests.helpers import sink_pipeline
from tests.processes import refusing_url, stop


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --- authentication and scopes -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/devices"),
        ("DELETE", "/v1/devices/1"),
        ("PUT", "/v1/topics/t/subscribers/u"),
        ("POST", "/v1/topics/t/subscribers"),
        ("GET", "/v1/users/u/subscriptions"),
        ("POST", "/v1/events"),
        ("POST", "/v1/users/u/notifications"),
        ("GET", "/v1/events/1"),
        ("POST", "/v1/events/1/cancel"),
    ],
)
async def test_every_v1_path_needs_a_key(api: ApiServer, method: str, path: str) -> None:
    async with api.client() as client:
        response = await client.request(method, path, json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("token", ["nonsense", "fo_x_y", "fo_000000000000_wrongsecret"])
async def test_a_wrong_key_is_401(api: ApiServer, token: str) -> None:
    async with api.client() as client:
        response = await client.get("/v1/events/1", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_a_right_key_id_with_a_wrong_secret_is_401(api: ApiServer) -> None:
    key_id, _ = split_token(api.keys["read"]) or ("", "")
    async with api.client() as client:
        response = await client.get(
            "/v1/events/1", headers={"Authorization": f"Bearer fo_{key_id}_forged"}
        )
    assert response.status_code == 401


async def test_a_revoked_key_is_refused_at_once(api: ApiServer) -> None:
    async with api.client("revoked") as client:
        assert (await client.get("/v1/events/999999999")).status_code == 404
        conn = await connect(api.settings.database_dsn())
        key_id, _ = split_token(api.keys["revoked"]) or ("", "")
        assert await revoke_api_key(conn, key_id)
        await conn.close()
        assert (await client.get("/v1/events/999999999")).status_code == 401


@pytest.mark.parametrize(
    ("key", "method", "path", "body"),
    [
        ("read", "POST", "/v1/events", {"topic": "t", "notification": {"title": "x"}}),
        ("publish", "POST", "/v1/devices", {"user_id": "u", "platform": "fcm", "token": "t"}),
        ("manage", "GET", "/v1/events/1", None),
        ("publish", "GET", "/v1/users/u/subscriptions", None),
    ],
)
async def test_a_key_without_the_scope_is_403(
    api: ApiServer,
    key: str,
    method: str,
    path: str,
    body: dict | None,  # type: ignore[type-arg]
) -> None:
    async with api.client(key) as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == 403
    assert "scope" in response.json()["detail"]


async def test_auth_errors_do_not_reveal_whether_an_event_exists(api: ApiServer) -> None:
    async with api.client("publish") as client:
        event = (
            await client.post(
                "/v1/events", json={"topic": unique("t"), "notification": {"title": "x"}}
            )
        ).json()["event_id"]
    async with api.client("manage") as client:
        existing = await client.get(f"/v1/events/{event}")
        missing = await client.get("/v1/events/999999999")
    assert existing.status_code == missing.status_code == 403
    assert existing.json() == missing.json()


# --- devices ----------------------------------------------------------------------------


async def test_registering_the_same_token_again_updates_the_same_device(api: ApiServer) -> None:
    body = {"user_id": unique("u"), "platform": "apns", "token": secrets.token_hex(32)}
    async with api.client("manage") as client:
        first = await client.post("/v1/devices", json=body)
        again = await client.post("/v1/devices", json={**body, "locale": "de"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]


async def test_an_apns_debug_build_registers_for_the_sandbox(api: ApiServer) -> None:
    body = {
        "user_id": unique("u"),
        "platform": "apns",
        "token": secrets.token_hex(32),
        "apns_environment": "sandbox",
    }
    async with api.client("manage") as client:
        first = await client.post("/v1/devices", json=body)
        released = await client.post("/v1/devices", json={**body, "apns_environment": "production"})
    assert (first.status_code, released.status_code) == (201, 200)  # the same device, moved


async def test_a_web_push_subscription_registers(api: ApiServer) -> None:
    body = {
        "user_id": unique("u"),
        "platform": "webpush",
        "subscription": {
            "endpoint": f"https://push.example.net/{unique('s')}",
            "keys": {"p256dh": "B" + "A" * 86, "auth": "a" * 22},
        },
    }
    async with api.client("manage") as client:
        response = await client.post("/v1/devices", json=body)
        deleted = await client.delete(f"/v1/devices/{response.json()['id']}")
        again = await client.delete(f"/v1/devices/{response.json()['id']}")
    assert response.status_code == 201
    assert (deleted.status_code, again.status_code) == (204, 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u", "platform": "apns", "token": "not-hex"}, "token"),
        ({"user_id": "u", "platform": "webpush", "token": "x"}, "subscription"),
        ({"user_id": "u", "platform": "fcm", "subscription": {}}, "token"),
        ({"user_id": "u", "platform": "sms", "token": "x"}, "platform"),
        ({"user_id": "bad id!", "platform": "fcm", "token": "x"}, "user_id"),
        ({"user_id": "u", "platform": "fcm", "token": "x", "colour": "red"}, "colour"),
        ({"platform": "fcm", "token": "x"}, "user_id"),
        (
            {"user_id": "u", "platform": "apns", "token": "ab" * 32, "apns_environment": "dev"},
            "apns_environment",
        ),
        (
            {"user_id": "u", "platform": "fcm", "token": "x", "apns_environment": "sandbox"},
            "apns_environment",
        ),
        (  # a NUL, which PostgreSQL refuses in text, was a 500
            {
                "user_id": "u",
                "platform": "webpush",
                "subscription": {
                    "endpoint": "https://push.example.net/a\u0000b",
                    "keys": {"p256dh": "AAAA", "auth": "AAAA"},
                },
            },
            "endpoint",
        ),
    ],
)
async def test_bad_devices_get_422_naming_the_field(
    api: ApiServer,
    body: dict,
    field: str,  # type: ignore[type-arg]
) -> None:
    async with api.client("manage") as client:
        response = await client.post("/v1/devices", json=body)
    assert response.status_code == 422
    assert field in response.text


async def test_malformed_json_is_a_422_not_a_500(api: ApiServer) -> None:
    async with api.client("manage") as client:
        response = await client.post(
            "/v1/devices", content=b'{"user_id": ', headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert "json" in response.text.lower()


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),  # curl -d
        ("text/plain; charset=utf-8", "text/plain"),
        (None, "none"),
    ],
)
async def test_a_json_body_without_the_json_content_type_is_415_naming_the_header(
    api: ApiServer, content_type: str | None, named: str
) -> None:
    """What `curl -d '{…}'` without `-H "Content-Type: application/json"` sends: refused
    with the header named, not with "Input should be a valid dictionary"."""
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"user_id": "u", "platform": "fcm", "token": "x"}'
    async with api.client("manage") as client:
        response = await client.post("/v1/devices", content=body, headers=headers)
    assert response.status_code == 415
    assert response.json() == {
        "detail": f"Content-Type must be application/json (this request's: {named})"
    }


async def test_every_json_route_answers_a_body_of_another_type_415_naming_the_header(
    api: ApiServer,
) -> None:
    """Each route whose body the OpenAPI document gives as JSON, not only /v1/devices."""
    conn = await connect(api.settings.database_dsn())
    try:
        admin = (await create_api_key(conn, ["admin"], "admin-415"))[1]
    finally:
        await conn.close()
    async with api.client() as client:
        document = (await client.get("/openapi.json")).json()
        routes = [
            (method.upper(), path)
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
            if "application/json" in operation.get("requestBody", {}).get("content", {})
        ]
        assert len(routes) >= 15  # the document was read
        refused = {}
        for method, path in routes:
            key = admin if path.startswith("/v1/apps") else api.keys["all"]
            response = await client.request(
                method,
                re.sub(r"\{[^}]+\}", "default", path),  # a value for each path parameter
                content=b'{"user_id": "u"}',
                headers={"authorization": f"Bearer {key}", "content-type": "text/plain"},
            )
            refused[method, path] = (response.status_code, response.json())
    expected = (
        415,
        {"detail": "Content-Type must be application/json (this request's: text/plain)"},
    )
    assert {route: answer for route, answer in refused.items() if answer != expected} == {}


async def test_a_body_over_the_limit_is_413(api: ApiServer) -> None:
    async with api.client("manage") as client:
        response = await client.post(
            "/v1/topics/t/subscribers",
            content=b"x" * (3 * 1024 * 1024),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413


# --- subscriptions ----------------------------------------------------------------------


async def test_subscribe_and_unsubscribe_are_idempotent(api: ApiServer) -> None:
    topic, user = unique("author"), unique("reader")
    async with api.client("all") as client:
        for _ in range(2):
            assert (await client.put(f"/v1/topics/{topic}/subscribers/{user}")).status_code == 204
        page = (await client.get(f"/v1/users/{user}/subscriptions")).json()
        assert [item["topic"] for item in page["items"]] == [topic]
        for _ in range(2):
            response = await client.delete(f"/v1/topics/{topic}/subscribers/{user}")
            assert response.status_code == 204
        assert (await client.get(f"/v1/users/{user}/subscriptions")).json()["items"] == []


async def test_bulk_import_of_ten_thousand_subscribers(api: ApiServer) -> None:
    topic = unique("author")
    users = [f"{topic}-r{i}" for i in range(10_000)]
    async with api.client("manage") as client:
        first = await client.post(f"/v1/topics/{topic}/subscribers", json={"user_ids": users})
        again = await client.post(f"/v1/topics/{topic}/subscribers", json={"user_ids": users})
    assert first.json() == {"requested": 10_000, "added": 10_000}
    assert again.json() == {"requested": 10_000, "added": 0}


async def test_subscriptions_are_paged_with_a_cursor(api: ApiServer) -> None:
    user = unique("reader")
    topics = [unique(f"topic{i}") for i in range(5)]
    async with api.client("all") as client:
        for topic in topics:
            await client.put(f"/v1/topics/{topic}/subscribers/{user}")
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get(f"/v1/users/{user}/subscriptions", params=params)).json()
            seen += [item["topic"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == topics


# --- publishing ---------------------------------------------------------------------------


async def test_the_same_idempotency_key_returns_the_same_event(api: ApiServer) -> None:
    body = {"topic": unique("t"), "notification": {"title": "x"}, "idempotency_key": unique("k")}
    async with api.client("publish") as client:
        first = await client.post("/v1/events", json=body)
        second = await client.post("/v1/events", json=body)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["event_id"] == second.json()["event_id"]
    assert (first.json()["created"], second.json()["created"]) == (True, False)


@pytest.mark.parametrize(
    "change",
    [
        {"topic": "another-topic"},
        {"notification": {"title": "y"}},
        {"notification": {"title": "x", "data": {"k": "v"}}},
        {"send_at": "2030-01-01T09:00:00Z"},
        {"quiet_hours": "ignore"},
    ],
    ids=["topic", "title", "data", "send_at", "quiet_hours"],
)
async def test_an_idempotency_key_reused_for_a_different_request_is_409(
    api: ApiServer,
    change: dict,  # type: ignore[type-arg]
) -> None:
    key = unique("k")
    body = {"topic": unique("t"), "notification": {"title": "x"}, "idempotency_key": key}
    async with api.client("publish") as client:
        first = await client.post("/v1/events", json=body)
        refused = await client.post("/v1/events", json={**body, **change})
        again = await client.post("/v1/events", json=body)
    assert (first.status_code, refused.status_code) == (202, 409)
    detail = refused.json()["detail"]
    assert "idempotency_key" in detail and "different request" in detail
    assert key not in refused.text
    # The refusal changed nothing: the first request still names the first event.
    assert (again.status_code, again.json()) == (202, {**first.json(), "created": False})


async def test_the_same_request_written_differently_is_the_same_request(api: ApiServer) -> None:
    """Compared once validated: field order, and a field sent with its default value,
    make no difference."""
    topic, key = unique("t"), unique("k")
    async with api.client("publish") as client:
        first = await client.post(
            "/v1/events",
            json={
                "topic": topic,
                "notification": {"title": "x", "priority": "high", "ttl": 60},
                "idempotency_key": key,
            },
        )
        second = await client.post(
            "/v1/events",
            json={
                "idempotency_key": key,
                "notification": {"ttl": 60, "title": "x"},
                "topic": topic,
            },
        )
    assert second.status_code == 202
    assert second.json() == {**first.json(), "created": False}


async def test_idempotency_keys_belong_to_the_api_key_that_sent_them(api: ApiServer) -> None:
    body = {"topic": unique("t"), "notification": {"title": "x"}, "idempotency_key": unique("k")}
    async with api.client("publish") as client:
        mine = await client.post("/v1/events", json=body)
    async with api.client("all") as client:
        theirs = await client.post("/v1/events", json=body)
        # Another API key's first use of the key binds nothing for this one.
        different = await client.post(
            "/v1/events",
            json={**body, "notification": {"title": "y"}, "idempotency_key": unique("k")},
        )
    assert (mine.status_code, theirs.status_code, different.status_code) == (202, 202, 202)
    assert mine.json()["event_id"] != theirs.json()["event_id"]
    assert mine.json()["created"] and theirs.json()["created"]


async def test_idempotency_keys_on_one_to_one_sends(api: ApiServer) -> None:
    user, key = unique("reader"), unique("k")
    body = {"notification": {"title": "Hi"}, "idempotency_key": key}
    async with api.client("publish") as client:
        first = await client.post(f"/v1/users/{user}/notifications", json=body)
        again = await client.post(f"/v1/users/{user}/notifications", json=body)
        other_user = await client.post(f"/v1/users/{unique('reader')}/notifications", json=body)
        as_topic = await client.post("/v1/events", json={**body, "topic": user})
        other_text = await client.post(
            f"/v1/users/{user}/notifications", json={**body, "notification": {"title": "Bye"}}
        )
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == {**first.json(), "created": False}
    assert other_user.status_code == as_topic.status_code == other_text.status_code == 409
    assert "idempotency_key" in other_user.json()["detail"]
    async with api.client("all") as client:
        theirs = await client.post(f"/v1/users/{user}/notifications", json=body)
    assert theirs.status_code == 202 and theirs.json()["created"]
    assert theirs.json()["event_id"] != first.json()["event_id"]


async def test_a_notification_over_4kb_is_refused_naming_the_field(api: ApiServer) -> None:
    body = {
        "topic": "t",
        "notification": {
            "title": "x",
            "body": "y" * 1000,
            "data": {f"k{i}": "v" * 200 for i in range(20)},
        },
    }
    async with api.client("publish") as client:
        response = await client.post("/v1/events", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "notification"]
    assert "4096" in response.text


async def test_a_notification_no_batch_can_carry_is_refused_not_accepted_to_die_later(
    api: ApiServer,
) -> None:
    """600 locales, each under 4 KB rendered, 1.2 MB together: more than an SQS message."""
    locales = {f"en-x{i:04d}": {"title": "T" * 1000, "body": "B" * 1000} for i in range(600)}
    body = {"topic": unique("author"), "notification": {"title": "x", "localized": locales}}
    async with api.client("publish") as client:
        response = await client.post("/v1/events", json=body)
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "notification"]
    assert "FANOUT_BATCH_MAX_BYTES" in problem["msg"]
    assert "TTTT" not in response.text  # names the limit, does not echo the request


@pytest.fixture
def slow_bucket_api(api: ApiServer, tmp_path: Path) -> Iterator[str]:
    """A second server on the same database whose publish bucket holds 3 requests and
    earns the next one only after 1,000 s: what passes cannot depend on how fast the
    requests come (60 requests against 10/s with a burst of 40 pass on a slow machine)."""
    process, url = start_server(
        api.settings,
        tmp_path / "slow-bucket.log",
        FANOUT_API_PUBLISH_RATE="0.001",
        FANOUT_API_PUBLISH_BURST="3",
    )
    try:
        yield url
    finally:
        stop(process)


async def test_publishing_too_fast_is_429_with_retry_after(
    api: ApiServer, slow_bucket_api: str
) -> None:
    async with api.client("limited") as client:
        client.base_url = slow_bucket_api  # type: ignore[assignment]
        responses = [
            await client.post("/v1/events", json={"topic": "t", "notification": {"title": "x"}})
            for _ in range(4)
        ]
    assert [r.status_code for r in responses] == [202, 202, 202, 429]
    # The token missing comes in 1,000 s, less the little time the requests took.
    assert 1 <= int(responses[-1].headers["retry-after"]) <= 1000


@pytest.fixture
async def worker(api: ApiServer) -> AsyncIterator[EmbeddedSink]:
    """A worker on the API's queues, delivering to a sink."""
    async with EmbeddedSink(PushSink()) as sink, sink_pipeline(api.settings, sink.url) as pipeline:
        stopping = asyncio.Event()
        task = asyncio.create_task(run_worker(api.settings, stopping, pipeline=pipeline))
        yield sink
        stopping.set()
        await task


async def wait_for_status(client, event_id: int, status: str = "delivered") -> dict:  # type: ignore[no-untyped-def, type-arg]
    """Until the event has ``status``; the deadline only ends a stuck test."""
    deadline = time.monotonic() + 60
    while True:
        body: dict = (await client.get(f"/v1/events/{event_id}")).json()  # type: ignore[type-arg]
        if body["status"] == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"event {event_id} stuck: {body}")
        await asyncio.sleep(0.1)


async def test_publish_through_the_api_delivers_to_every_subscriber(
    api: ApiServer, worker: EmbeddedSink
) -> None:
    topic = unique("author")
    async with api.client("all") as client:
        for i in range(30):
            user = f"{topic}-r{i}"
            await client.put(f"/v1/topics/{topic}/subscribers/{user}")
            await client.post(
                "/v1/devices", json={"user_id": user, "platform": "fcm", "token": unique("fcm")}
            )
        accepted = await client.post(
            "/v1/events", json={"topic": topic, "notification": {"title": "New book"}}
        )
        status = await wait_for_status(client, accepted.json()["event_id"])
    assert (status["recipients"], status["devices"], status["sent"]) == (30, 30, 30)
    assert status["pending"] == 0 and status["finished_at"] is not None
    # This event's pushes: the worker also delivers what earlier tests left on the API's
    # queues (the OpenAPI fuzz's Live Activity updates to the tokens it registered).
    assert worker.sink.ledger.events()[str(accepted.json()["event_id"])].unique == 30
    # `fanout status` prints the same fields with the same types and values.
    shown = subprocess.run(
        [sys.executable, "-m", "fanout", "status", str(status["event_id"])],
        env={**os.environ, "FANOUT_DATABASE_URL": api.settings.database_dsn()},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout) == status


async def test_one_to_one_send_reaches_all_of_the_users_devices(
    api: ApiServer, worker: EmbeddedSink
) -> None:
    user = unique("reader")
    async with api.client("all") as client:
        for _ in range(3):
            await client.post(
                "/v1/devices",
                json={"user_id": user, "platform": "apns", "token": secrets.token_hex(32)},
            )
        accepted = await client.post(
            f"/v1/users/{user}/notifications", json={"notification": {"title": "Hi"}}
        )
        assert accepted.status_code == 202
        status = await wait_for_status(client, accepted.json()["event_id"])
    assert status["sent"] == 3


async def test_crash_between_commit_and_enqueue_still_delivers(
    api: ApiServer, worker: EmbeddedSink, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """An API whose queue is unreachable commits the event; the reconciler sends it."""
    with refusing_url() as nowhere:
        broken, url = start_server(
            api.settings, tmp_path / "broken.log", FANOUT_SQS_ENDPOINT_URL=nowhere
        )
        try:
            topic, user = unique("author"), unique("reader")
            async with api.client("all") as client:
                await client.put(f"/v1/topics/{topic}/subscribers/{user}")
                await client.post(
                    "/v1/devices", json={"user_id": user, "platform": "fcm", "token": unique("f")}
                )
                async with api.client("publish") as other:
                    other.base_url = url  # type: ignore[assignment]
                    accepted = await other.post(
                        "/v1/events", json={"topic": topic, "notification": {"title": "x"}}
                    )
                assert accepted.status_code == 202
                status = await wait_for_status(client, accepted.json()["event_id"])
            assert status["sent"] == 1
        finally:
            stop(broken)


# --- operations ---------------------------------------------------------------------------


async def test_healthz_and_metrics(api: ApiServer) -> None:
    async with api.client() as client:
        health = await client.get("/healthz")
        metrics = await client.get("/metrics")
    assert health.status_code == 200 and health.json() == {"database": "ok", "queue": "ok"}
    assert "fanout_http_requests_total" in metrics.text
    # The pipeline's own (fanout.metrics) and the event-level gauges, read from PostgreSQL.
    assert "# TYPE fanout_provider_outcomes_total counter" in metrics.text
    assert "# TYPE fanout_provider_accept_latency_seconds histogram" in metrics.text
    assert 'fanout_events_open{status="pending"}' in metrics.text
    assert 'fanout_events_oldest_open_age_seconds{status="fanned_out"}' in metrics.text


async def test_secrets_never_appear_in_logs_or_error_bodies(api: ApiServer) -> None:
    token = api.keys["publish"]
    _, secret = split_token(token) or ("", "")
    async with api.client("publish") as client:
        bodies = [
            (await client.get("/v1/events/1")).text,
            (await client.post("/v1/devices", json={})).text,
            (
                await client.post(
                    "/v1/events", content=b"{", headers={"content-type": "application/json"}
                )
            ).text,
        ]
    for text in [*bodies, api.log.read_text()]:
        assert secret not in text
        assert api.settings.database_dsn() not in text
