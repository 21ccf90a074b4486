"""The emulators refuse what Apple, Google and push services document, and keep what
they accepted: spoken to directly (ASGI), with requests fanout would never send."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fanout.local.emulators.apns import ApnsEmulator
from fanout.local.emulators.fcm import FcmEmulator
from fanout.local.emulators.webpush import WebPushEmulator
from fanout.providers.webpush import b64url, b64url_decode, encrypt

BUNDLE = "com.example.books"
DEVICE = "ab" * 32


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://push.test")


# --- APNs -----------------------------------------------------------------------------


@pytest.fixture
def apns() -> tuple[ApnsEmulator, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    emulator = ApnsEmulator(public_keys={"KEY1": key.public_key()}, team_id="TEAM", topic=BUNDLE)
    emulator.keep_accepted = True
    token = jwt.encode({"iss": "TEAM", "iat": int(time.time())}, key, "ES256", {"kid": "KEY1"})
    return emulator, token


async def apns_push(
    apns: tuple[ApnsEmulator, str], payload: Any, **headers: str
) -> tuple[int, str]:
    emulator, token = apns
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    sent = {"apns-topic": BUNDLE, "apns-push-type": "alert", **headers}
    async with client(emulator) as http:
        answer = await http.post(
            f"/3/device/{DEVICE}",
            content=body,
            headers={**{k.replace("_", "-"): v for k, v in sent.items()},
                     "authorization": f"bearer {token}"},
        )  # fmt: skip
    return answer.status_code, (answer.json()["reason"] if answer.content else "")


ALERT = {"aps": {"alert": {"title": "t", "body": "b"}}}
BACKGROUND = {"aps": {"content-available": 1}, "sync": "1"}
LIVE = {"aps": {"event": "update", "timestamp": 1_700_000_000, "content-state": {"score": "2-1"}}}
LIVE_TOPIC = f"{BUNDLE}.push-type.liveactivity"


@pytest.mark.parametrize(
    ("payload", "headers", "answer"),
    [
        (ALERT, {}, (200, "")),
        (BACKGROUND, {"apns-push-type": "background", "apns-priority": "5"}, (200, "")),
        # Apple: a background push at priority 10 is an error.
        (BACKGROUND, {"apns-push-type": "background", "apns-priority": "10"}, (400, "BadPriority")),
        (BACKGROUND, {"apns-push-type": "background"}, (400, "BadPriority")),  # 10 by default
        # A background push that would alert, sound or badge: the push type lies.
        ({"aps": {"content-available": 1, "alert": "hi"}},
         {"apns-push-type": "background", "apns-priority": "5"}, (400, "InvalidPushType")),
        ({"aps": {"content-available": 1, "badge": 1}},
         {"apns-push-type": "background", "apns-priority": "5"}, (400, "InvalidPushType")),
        ({"aps": {}}, {"apns-push-type": "background", "apns-priority": "5"},
         (400, "InvalidPushType")),
        ({"aps": {"content-available": 1}}, {}, (400, "InvalidPushType")),  # alert, not alerting
        ({"aps": {"badge": 3}}, {}, (200, "")),  # a badge alone is a user interaction
        (ALERT, {"apns-push-type": "voip"}, (400, "InvalidPushType")),
        (ALERT, {"apns-priority": "7"}, (400, "BadPriority")),
        (ALERT, {"apns-expiration": "tomorrow"}, (400, "BadExpirationDate")),
        (ALERT, {"apns-collapse-id": "x" * 65}, (400, "BadCollapseId")),
        (ALERT, {"apns-topic": "com.example.other"}, (400, "BadTopic")),
        (b"", {}, (400, "PayloadEmpty")),
        ({"aps": {"alert": "x" * 4100}}, {}, (413, "PayloadTooLarge")),
        ({"no": "aps"}, {}, (400, "BadPayload")),
        # Live Activities: their own topic, an event, a timestamp, a content state.
        (LIVE, {"apns-push-type": "liveactivity", "apns-topic": LIVE_TOPIC}, (200, "")),
        (LIVE, {"apns-push-type": "liveactivity"}, (400, "BadTopic")),
        ({"aps": {**LIVE["aps"], "timestamp": None}},
         {"apns-push-type": "liveactivity", "apns-topic": LIVE_TOPIC}, (400, "BadPayload")),
        ({"aps": {"event": "update", "timestamp": 1}},
         {"apns-push-type": "liveactivity", "apns-topic": LIVE_TOPIC}, (400, "BadPayload")),
        ({"aps": {"event": "end", "timestamp": 1}},
         {"apns-push-type": "liveactivity", "apns-topic": LIVE_TOPIC}, (200, "")),
        ({"aps": {**LIVE["aps"], "event": "start"}},
         {"apns-push-type": "liveactivity", "apns-topic": LIVE_TOPIC}, (400, "BadPayload")),
        ({"aps": {**LIVE["aps"], "event": "start", "attributes-type": "Match",
                  "attributes": {"home": "A"}}},
         {"apns-push-type": "liveactivity", "apns-topic": LIVE_TOPIC}, (200, "")),
        ({"aps": {**LIVE["aps"], "event": "pause"}},
         {"apns-push-type": "liveactivity", "apns-topic": LIVE_TOPIC}, (400, "BadPayload")),
    ],
)  # fmt: skip
async def test_apns_answers_each_push_type_as_apple_does(
    apns: tuple[ApnsEmulator, str],
    payload: Any,
    headers: dict[str, str],
    answer: tuple[int, str],
) -> None:
    assert await apns_push(apns, payload, **headers) == answer
    accepted = apns[0].accepted
    assert len(accepted) == (1 if answer[0] == 200 else 0)
    assert apns[0].ledger.unique == len(accepted)


async def test_apns_keeps_an_accepted_request_as_it_came(apns: tuple[ApnsEmulator, str]) -> None:
    headers = {"apns-push-type": "background", "apns-priority": "5", "apns-collapse-id": "7"}
    await apns_push(apns, BACKGROUND, **headers)
    [push] = apns[0].accepted
    assert (push.token, push.payload) == (DEVICE, BACKGROUND)
    assert push.headers.items() >= {"apns-topic": BUNDLE, **headers}.items()
    assert push.headers["content-length"] == str(len(orjson.dumps(BACKGROUND)))
    assert "authorization" not in push.headers and "host" not in push.headers


# --- FCM ------------------------------------------------------------------------------


@pytest.fixture
def fcm() -> FcmEmulator:
    emulator = FcmEmulator(project_id="p", client_email="e", public_key=None)
    emulator.issued_tokens.add("ya29.test")
    emulator.keep_accepted = True
    return emulator


async def fcm_send(emulator: FcmEmulator, **message: Any) -> tuple[int, str]:
    async with client(emulator) as http:
        answer = await http.post(
            "/v1/projects/p/messages:send",
            json={"message": {"token": "device-1", **message}},
            headers={"authorization": "Bearer ya29.test"},
        )
    error = answer.json().get("error", {})
    return answer.status_code, error.get("status", "") + ": " + error.get("message", "")


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        ({"data": {"count": "3"}}, "OK"),
        ({"data": {"a": "1", "count": 3}},
         "INVALID_ARGUMENT: Invalid value at 'message.data[1].value' (TYPE_STRING), 3"),
        ({"android": {"data": {"n": True}}},
         "INVALID_ARGUMENT: Invalid value at 'message.android.data[0].value' (TYPE_STRING), True"),
        ({"webpush": {"data": {"n": 1.5}}},
         "INVALID_ARGUMENT: Invalid value at 'message.webpush.data[0].value' (TYPE_STRING), 1.5"),
        ({"data": {"from": "x"}}, "INVALID_ARGUMENT: Invalid data key 'from' at 'message.data': a reserved word"),
        ({"data": {"google.x": "x"}},
         "INVALID_ARGUMENT: Invalid data key 'google.x' at 'message.data': a reserved word"),
        ({"android": {"priority": "high"}},
         "INVALID_ARGUMENT: Invalid value at 'message.android.priority' (TYPE_ENUM)"),
        ({"android": {"ttl": "60"}}, "INVALID_ARGUMENT: Invalid value at 'message.android.ttl' "
         "(type.googleapis.com/google.protobuf.Duration)"),
        ({"kind": "background"},
         "INVALID_ARGUMENT: Invalid JSON payload received. Unknown name \"kind\" at 'message'"),
        ({"data": {}, "apns": {"headers": {"apns-priority": "10"}}},
         "INVALID_ARGUMENT: A data message to iOS may only have apns-priority 5"),
        ({"notification": {"title": "t"}, "apns": {"headers": {"apns-priority": "10"}}}, "OK"),
        ({"data": {"blob": "x" * 4090}}, "INVALID_ARGUMENT: Message is too big"),
    ],
)  # fmt: skip
async def test_fcm_refuses_what_its_reference_refuses(
    fcm: FcmEmulator, message: dict[str, Any], answer: str
) -> None:
    status, said = await fcm_send(fcm, **message)
    if answer == "OK":
        assert status == 200 and len(fcm.accepted) == 1
        assert fcm.accepted[0].payload == {"token": "device-1", **message}
    else:
        assert (status, said) == (400, answer)
        assert fcm.accepted == []


@pytest.mark.parametrize(
    ("setup", "path", "answer"),
    [
        # An access token it did not issue (or revoked): the access token refused.
        (lambda e: e.issued_tokens.clear(), None, (401, "UNAUTHENTICATED", "", 1)),
        # The service account lacks cloudmessaging.messages.create on its project.
        (lambda e: e.without_permission.add("e"), None, (403, "PERMISSION_DENIED", "", 1)),
        # Another project's send method: not the account's project.
        (None, "/v1/projects/q/messages:send", (403, "PERMISSION_DENIED", "", 1)),
        # An iOS app's token, the project without an APNs key: that token's push refused.
        (lambda e: (e.ios_tokens.add("device-1"), e.projects_without_apns_key.add("p")),
         None, (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", 0)),
        (lambda e: e.ios_tokens.add("device-1"), None, (200, "", "", 0)),  # it has one
    ],
)  # fmt: skip
async def test_fcm_refuses_a_credential_as_google_does(
    fcm: FcmEmulator, setup: Any, path: str | None, answer: tuple[int, str, str, int]
) -> None:
    if setup is not None:
        setup(fcm)
    async with client(fcm) as http:
        sent = await http.post(
            path or "/v1/projects/p/messages:send",
            json={"message": {"token": "device-1"}},
            headers={"authorization": "Bearer ya29.test"},
        )
    error = sent.json().get("error", {})
    codes = [d.get("errorCode") for d in error.get("details", [])]
    status, canonical, error_code, refused = answer
    assert (sent.status_code, error.get("status", "")) == (status, canonical)
    assert codes == ([error_code] if error_code else [])
    assert (fcm.refused, fcm.requests) == (refused, 1)


async def test_fcm_answers_a_path_it_does_not_serve_with_googles_404_page(fcm: FcmEmulator) -> None:
    async with client(fcm) as http:
        sent = await http.post("/fcm/v1/projects/p/messages:send", json={"message": {}})
    assert sent.status_code == 404 and sent.headers["content-type"].startswith("text/html")
    assert "was not found on this server" in sent.text


# --- Web Push ---------------------------------------------------------------------------


@pytest.fixture
def webpush() -> tuple[WebPushEmulator, str, bytes, str]:
    """The emulator, the subscription's public key and auth secret, a VAPID header."""
    subscriber = ec.generate_private_key(ec.SECP256R1())
    auth = os.urandom(16)
    emulator = WebPushEmulator(private_key=subscriber, auth=auth)
    emulator.base_url = "http://push.test"
    emulator.keep_accepted = True
    vapid = ec.generate_private_key(ec.SECP256R1())
    claims = {"aud": emulator.base_url, "exp": int(time.time()) + 3600, "sub": "mailto:a@b.c"}
    key = b64url(vapid.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))  # fmt: skip
    public = subscriber.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return emulator, b64url(public), auth, f"vapid t={jwt.encode(claims, vapid, 'ES256')}, k={key}"


async def web_push(
    webpush: tuple[WebPushEmulator, str, bytes, str], plaintext: bytes, **headers: str
) -> int:
    emulator, p256dh, auth, vapid = webpush
    body = encrypt(plaintext, b64url_decode(p256dh), auth)
    sent = {"TTL": "60", "Content-Encoding": "aes128gcm", "Authorization": vapid, **headers}
    async with client(emulator) as http:
        answer = await http.post("/wp/sub1", content=body, headers=sent)
    return answer.status_code


@pytest.mark.parametrize(
    ("size", "headers", "status"),
    [
        (100, {}, 201),
        (4096 - 103, {"Urgency": "very-low", "Topic": "a" * 32}, 201),  # 4,096 encrypted
        (4096 - 102, {}, 413),
        (100, {"Urgency": "urgent"}, 400),
        (100, {"Topic": "a" * 33}, 400),
        (100, {"Topic": "not/base64url"}, 400),
        (100, {"TTL": "soon"}, 400),
    ],
)
async def test_web_push_takes_4096_bytes_encrypted_and_rfc_8030s_headers(
    webpush: tuple[WebPushEmulator, str, bytes, str],
    size: int,
    headers: dict[str, str],
    status: int,
) -> None:
    assert await web_push(webpush, b"x" * size, **headers) == status
    assert len(webpush[0].accepted) == (1 if status == 201 else 0)


async def test_web_push_keeps_the_decrypted_payload(
    webpush: tuple[WebPushEmulator, str, bytes, str],
) -> None:
    await web_push(webpush, b'{"kind":"background","data":{"a":"1"}}', Topic="t1")
    await web_push(webpush, b"not json")
    first, second = webpush[0].accepted
    assert (first.token, first.payload) == ("sub1", {"kind": "background", "data": {"a": "1"}})
    assert first.headers["topic"] == "t1" and "authorization" not in first.headers
    assert second.payload == b"not json"


@pytest.mark.parametrize("status", [403, 401])  # Google's and Apple's; Mozilla's autopush
async def test_web_push_refuses_vapid_as_rfc_8292_says(
    webpush: tuple[WebPushEmulator, str, bytes, str], status: int
) -> None:
    """Without VAPID: 401. With a key that is not the one the subscription was made with:
    the service's status for an invalid VAPID authorization."""
    emulator = webpush[0]
    emulator.vapid_refusal_status = status
    assert await web_push(webpush, b"x", Authorization="") == 401
    emulator.subscription_keys["sub"] = b64url(b"\x04" + b"\x01" * 64)  # another key's
    assert await web_push(webpush, b"x") == status
    emulator.subscription_keys.clear()
    assert await web_push(webpush, b"x") == 201
    assert (emulator.refused, emulator.requests, len(emulator.accepted)) == (2, 3, 1)
