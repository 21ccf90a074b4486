"""Every kind of push, published through the API, as each push service receives it.

The API runs in this process (the real app, over ASGI); delivery runs through the push
providers to the local APNs, FCM and Web Push emulators, which refuse what Apple and
Google refuse and keep what they accepted: the exact headers and JSON (Web Push's
decrypted) asserted here.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from fanout.api import create_app
from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.local.emulators.base import AcceptedPush
from fanout.local.emulators.stack import LocalPushServices
from fanout.providers.webpush import ENCRYPTION_OVERHEAD
from fanout.runtime.pipeline import Pipeline
from fanout.store import apps, connect
from tests.helpers import run_everything, status

TOPIC = "com.example.books"  # the emulators' bundle id (local_push_services)


@dataclass
class Audience:
    """One user of a fresh topic with a device on each platform."""

    topic: str
    apns: str  # the device token
    fcm: str  # the registration token
    webpush: str  # the subscription's id at the emulator


@contextlib.asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app on these settings, and a client holding a key of every scope."""
    conn = await connect(settings.database_dsn())
    try:
        _, token = await create_api_key(conn, ["publish", "manage", "read"], "kinds")
    finally:
        await conn.close()
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client,
    ):
        yield client


@pytest.fixture
async def api(push_pipeline: Pipeline) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(push_pipeline.settings) as client:
        yield client


@pytest.fixture
def recording(services: LocalPushServices) -> LocalPushServices:
    for emulator in (services.apns, services.fcm, services.webpush):
        emulator.keep_accepted = True
    return services


async def audience(api: httpx.AsyncClient, services: LocalPushServices) -> Audience:
    run = secrets.token_hex(4)
    found = Audience(
        topic=f"kinds:{run}",
        apns=secrets.token_hex(32),
        fcm=f"fcm-{run}:APA91b{secrets.token_urlsafe(40)}",
        webpush=f"sub-{run}",
    )
    user = f"reader-{run}"
    devices: list[dict[str, Any]] = [
        {"platform": "apns", "token": found.apns},
        {"platform": "fcm", "token": found.fcm},
        {
            "platform": "webpush",
            "subscription": {
                "endpoint": services.webpush_endpoint_base + found.webpush,
                "keys": {"p256dh": services.p256dh, "auth": services.auth},
            },
        },
    ]
    for device in devices:
        answer = await api.post("/v1/devices", json={"user_id": user, "locale": "en", **device})
        assert answer.status_code == 201, answer.text
    assert (await api.put(f"/v1/topics/{found.topic}/subscribers/{user}")).status_code == 204
    return found


async def publish(
    api: httpx.AsyncClient, pipeline: Pipeline, topic: str, notification: dict[str, Any]
) -> tuple[int, int, int]:
    """Publish, deliver everything; (event id, the UNIX seconds before, after)."""
    before = int(time.time())
    answer = await api.post("/v1/events", json={"topic": topic, "notification": notification})
    assert answer.status_code == 202, answer.text
    event_id = int(answer.json()["event_id"])
    await run_everything(pipeline)
    finished = await status(pipeline, event_id)
    assert (finished.status, finished.sent) == ("delivered", 3), finished
    return event_id, before, int(time.time())


def received(push: AcceptedPush, *varying: str) -> tuple[dict[str, str], Any]:
    """Its headers without those that vary by request (checked by the caller), and its
    JSON; content-length is checked here against the JSON (plus what encryption adds)."""
    body = {"message": push.payload} if "token" in push.payload else push.payload
    encrypted = push.headers.get("content-encoding") == "aes128gcm"
    length = len(orjson.dumps(body)) + (ENCRYPTION_OVERHEAD if encrypted else 0)
    assert push.headers["content-length"] == str(length)
    headers = {k: v for k, v in push.headers.items() if k not in {*varying, "content-length"}}
    return headers, push.payload


def expires(push: AcceptedPush, header: str, before: int, after: int, ttl: int) -> bool:
    """An expiry written at send time: ttl seconds after some moment of the test."""
    return before + ttl <= int(push.headers[header]) <= after + ttl


# --- alert ------------------------------------------------------------------------------


async def test_an_alert_with_every_option_as_each_service_receives_it(
    api: httpx.AsyncClient, push_pipeline: Pipeline, recording: LocalPushServices
) -> None:
    to = await audience(api, recording)
    event_id, before, after = await publish(
        api,
        push_pipeline,
        to.topic,
        {
            "title": "Chapter 12",
            "subtitle": "The Long Fan-Out",
            "body": "Ada has published a new chapter.",
            "data": {"book_id": "1001"},
            "url": "https://books.example.com/b/1001/12",
            "thread_id": "book-1001",
            "interruption_level": "time-sensitive",
            "relevance_score": 0.8,
            "action_category": "NEW_CHAPTER",
            "actions": [
                {"id": "read", "title": "Read now", "url": "https://books.example.com/r/12"},
                {"id": "later", "title": "Later", "icon": "https://books.example.com/i.png"},
            ],
            "mutable_content": True,
            "ttl": 3600,
        },
    )
    key = str(event_id)

    [apns] = recording.apns.accepted
    assert apns.token == to.apns
    assert expires(apns, "apns-expiration", before, after, 3600)
    assert received(apns, "apns-expiration") == (
        {
            "apns-topic": TOPIC,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-collapse-id": key,
        },
        {
            "aps": {
                "alert": {
                    "title": "Chapter 12",
                    "subtitle": "The Long Fan-Out",
                    "body": "Ada has published a new chapter.",
                },
                "thread-id": "book-1001",
                "category": "NEW_CHAPTER",
                "interruption-level": "time-sensitive",
                "relevance-score": 0.8,
                "mutable-content": 1,
            },
            "book_id": "1001",
            "url": "https://books.example.com/b/1001/12",
        },
    )

    [fcm] = recording.fcm.accepted
    fcm_received = received(fcm)
    expiration = int(fcm.payload["apns"]["headers"].pop("apns-expiration"))
    assert before + 3600 <= expiration <= after + 3600
    assert fcm_received == (
        {"content-type": "application/json"},
        {
            "token": to.fcm,
            "notification": {"title": "Chapter 12", "body": "Ada has published a new chapter."},
            "data": {"book_id": "1001", "url": "https://books.example.com/b/1001/12"},
            "android": {
                "collapse_key": key,
                "priority": "HIGH",
                "ttl": "3600s",
                "notification": {"tag": "book-1001"},
            },
            "apns": {
                "headers": {
                    "apns-collapse-id": key,
                    "apns-priority": "10",
                    "apns-push-type": "alert",
                },
                "payload": {
                    "aps": {
                        "alert": {
                            "title": "Chapter 12",
                            "subtitle": "The Long Fan-Out",
                            "body": "Ada has published a new chapter.",
                        },
                        "thread-id": "book-1001",
                        "category": "NEW_CHAPTER",
                        "interruption-level": "time-sensitive",
                        "relevance-score": 0.8,
                        "mutable-content": 1,
                    }
                },
            },
            "webpush": {
                "headers": {"TTL": "3600", "Urgency": "high"},
                "fcm_options": {"link": "https://books.example.com/b/1001/12"},
                "notification": {
                    "tag": "book-1001",
                    "actions": [
                        {
                            "action": "read",
                            "title": "Read now",
                            "navigate": "https://books.example.com/r/12",
                        },
                        {
                            "action": "later",
                            "title": "Later",
                            "icon": "https://books.example.com/i.png",
                        },
                    ],
                },
            },
        },
    )

    [web] = recording.webpush.accepted
    assert web.token == to.webpush
    assert received(web) == (
        {
            "ttl": "3600",
            "urgency": "high",
            "topic": key,
            "content-encoding": "aes128gcm",
            "content-type": "application/octet-stream",
        },
        {  # decrypted by the emulator (http_ece)
            "kind": "alert",
            "title": "Chapter 12",
            "subtitle": "The Long Fan-Out",
            "body": "Ada has published a new chapter.",
            "url": "https://books.example.com/b/1001/12",
            "tag": "book-1001",
            "actions": [
                {
                    "action": "read",
                    "title": "Read now",
                    "navigate": "https://books.example.com/r/12",
                },
                {"action": "later", "title": "Later", "icon": "https://books.example.com/i.png"},
            ],
            "data": {"book_id": "1001"},
            "ttl": 3600,
            "priority": "high",
            "collapse_key": key,
        },
    )


# --- background -------------------------------------------------------------------------


async def test_a_background_push_wakes_the_app_with_its_data_on_every_platform(
    api: httpx.AsyncClient, push_pipeline: Pipeline, recording: LocalPushServices
) -> None:
    to = await audience(api, recording)
    event_id, before, after = await publish(
        api,
        push_pipeline,
        to.topic,
        # priority "high" is the default: Apple still gets 5, FCM and Web Push "high".
        {"kind": "background", "data": {"sync": "library", "since": "1001"}, "ttl": 600},
    )
    key = str(event_id)

    [apns] = recording.apns.accepted
    assert expires(apns, "apns-expiration", before, after, 600)
    assert received(apns, "apns-expiration") == (
        {
            "apns-topic": TOPIC,
            "apns-push-type": "background",
            "apns-priority": "5",
            "apns-collapse-id": key,
        },
        {"aps": {"content-available": 1}, "sync": "library", "since": "1001"},
    )

    [fcm] = recording.fcm.accepted
    assert received(fcm)[0] == {"content-type": "application/json"}
    expiration = int(fcm.payload["apns"]["headers"].pop("apns-expiration"))
    assert before + 600 <= expiration <= after + 600
    assert fcm.payload == {  # a data message: no notification block
        "token": to.fcm,
        "data": {"sync": "library", "since": "1001"},
        "android": {"collapse_key": key, "priority": "HIGH", "ttl": "600s"},
        "apns": {
            "headers": {
                "apns-collapse-id": key,
                "apns-priority": "5",
                "apns-push-type": "background",
            },
            "payload": {"aps": {"content-available": 1}},
        },
        "webpush": {"headers": {"TTL": "600", "Urgency": "high"}},
    }

    [web] = recording.webpush.accepted
    assert received(web) == (
        {
            "ttl": "600",
            "urgency": "high",
            "topic": key,
            "content-encoding": "aes128gcm",
            "content-type": "application/octet-stream",
        },
        {
            "kind": "background",
            "data": {"sync": "library", "since": "1001"},
            "ttl": 600,
            "priority": "high",
            "collapse_key": key,
        },
    )


async def test_a_normal_priority_background_push_is_normal_on_android_and_the_web(
    api: httpx.AsyncClient, push_pipeline: Pipeline, recording: LocalPushServices
) -> None:
    to = await audience(api, recording)
    await publish(
        api, push_pipeline, to.topic, {"kind": "background", "priority": "normal", "ttl": 0}
    )
    [apns], [fcm], [web] = (
        recording.apns.accepted, recording.fcm.accepted, recording.webpush.accepted,
    )  # fmt: skip
    assert (apns.headers["apns-priority"], apns.headers["apns-expiration"]) == ("5", "0")
    assert apns.payload == {"aps": {"content-available": 1}}
    assert fcm.payload["android"]["priority"] == "NORMAL"
    assert "notification" not in fcm.payload and fcm.payload["data"] == {}
    assert web.headers["urgency"] == "normal" and web.payload["priority"] == "normal"


# --- per-platform overrides -------------------------------------------------------------


async def test_overrides_merge_into_each_platforms_request(
    api: httpx.AsyncClient, push_pipeline: Pipeline, recording: LocalPushServices
) -> None:
    to = await audience(api, recording)
    event_id, _, _ = await publish(
        api,
        push_pipeline,
        to.topic,
        {
            "title": "Sale",
            "body": "Half price today",
            "ttl": 0,
            "apns": {
                "headers": {"apns-priority": "5", "APNS-Collapse-Id": "sale"},
                "payload": {"aps": {"sound": "chime.caf", "badge": 3}, "campaign": {"id": 7}},
            },
            "fcm": {
                "android": {
                    "notification": {"channel_id": "offers", "color": "#ff0000"},
                    "priority": "NORMAL",
                },
                "fcm_options": {"analytics_label": "sale"},
            },
            "webpush": {
                "headers": {"urgency": "low"},
                "payload": {"requireInteraction": True, "priority": None},
            },
        },
    )
    [apns], [fcm], [web] = (
        recording.apns.accepted, recording.fcm.accepted, recording.webpush.accepted,
    )  # fmt: skip
    assert received(apns) == (
        {
            "apns-topic": TOPIC,
            "apns-push-type": "alert",
            "apns-priority": "5",
            "apns-expiration": "0",
            "apns-collapse-id": "sale",
        },
        {
            "aps": {"alert": {"title": "Sale", "body": "Half price today"}, "sound": "chime.caf",
                    "badge": 3},
            "campaign": {"id": 7},
        },
    )  # fmt: skip
    assert fcm.payload["android"] == {
        "collapse_key": str(event_id),
        "priority": "NORMAL",
        "ttl": "0s",
        "notification": {"channel_id": "offers", "color": "#ff0000"},
    }
    assert fcm.payload["fcm_options"] == {"analytics_label": "sale"}
    assert web.headers["urgency"] == "low"
    # A null in the merge patch removes the key (RFC 7396).
    assert web.payload == {
        "kind": "alert",
        "title": "Sale",
        "body": "Half price today",
        "data": {},
        "ttl": 0,
        "collapse_key": str(event_id),
        "requireInteraction": True,
    }


# --- critical alerts --------------------------------------------------------------------


async def test_a_critical_alert_goes_out_once_the_app_is_allowed_it(
    push_pipeline: Pipeline, recording: LocalPushServices
) -> None:
    allowed = push_pipeline.settings.model_copy(update={"apns_allow_critical": True})
    async with api_client(allowed) as api:
        to = await audience(api, recording)
        await publish(
            api,
            push_pipeline,
            to.topic,
            {"title": "Flood warning", "sound": "siren.caf", "interruption_level": "critical"},
        )
    [apns] = recording.apns.accepted
    assert apns.payload["aps"] == {
        "alert": {"title": "Flood warning", "body": ""},
        "sound": {"critical": 1, "name": "siren.caf", "volume": 1.0},
        "interruption-level": "critical",
    }
    [fcm] = recording.fcm.accepted
    assert fcm.payload["apns"]["payload"] == {"aps": {"interruption-level": "critical"}}


async def test_an_apps_own_allow_critical_wins_over_the_deployments(
    push_pipeline: Pipeline, recording: LocalPushServices
) -> None:
    """FANOUT_APNS_ALLOW_CRITICAL is only the default: an app Apple has not granted the
    entitlement, set false, is refused even where the deployment allows it."""
    allowed = push_pipeline.settings.model_copy(update={"apns_allow_critical": True})
    async with push_pipeline.pool.acquire() as conn:
        await apps.set_allow_critical(conn, key=apps.DEFAULT_APP, allow_critical=False)
    async with api_client(allowed) as api:
        to = await audience(api, recording)
        answer = await api.post(
            "/v1/events",
            json={
                "topic": to.topic,
                "notification": {"title": "t", "interruption_level": "critical"},
            },
        )
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "notification", "interruption_level"]
    await run_everything(push_pipeline)
    assert recording.apns.accepted == []


async def test_a_critical_alert_is_refused_while_the_app_is_not_allowed_it(
    api: httpx.AsyncClient, push_pipeline: Pipeline, recording: LocalPushServices
) -> None:
    to = await audience(api, recording)
    for notification, loc in [
        ({"title": "t", "interruption_level": "critical"}, ["interruption_level"]),
        (
            {"title": "t", "apns": {"payload": {"aps": {"sound": {"critical": 1, "name": "a"}}}}},
            ["apns", "payload", "aps", "sound"],
        ),
        (
            {
                "title": "t",
                "fcm": {"apns": {"payload": {"aps": {"interruption-level": "critical"}}}},
            },
            ["fcm", "apns", "payload", "aps", "interruption-level"],
        ),
    ]:
        answer = await api.post(
            "/v1/events", json={"topic": to.topic, "notification": notification}
        )
        assert answer.status_code == 422
        [problem] = answer.json()["detail"]
        assert problem["loc"] == ["body", "notification", *loc]
        assert "FANOUT_APNS_ALLOW_CRITICAL" in problem["msg"]
    await run_everything(push_pipeline)
    assert recording.apns.accepted == recording.fcm.accepted == []
