"""FCM HTTP v1: one POST per device, an OAuth2 access token from a service account.

https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any, assert_never

import orjson
import requests
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from requests.adapters import HTTPAdapter

from fanout.notification import RenderedNotification
from fanout.open_tokens import DATA_KEY, JSON_OVERHEAD, EventTokens
from fanout.overrides import merged
from fanout.providers.base import (
    DELIVERED,
    LIVE_ACTIVITY_NOT_HERE,
    Device,
    Outcome,
    OutcomeKind,
    config_error,
    not_yet_the_tokens,
)
from fanout.providers.http2 import Http2Provider
from fanout.providers.transport import tls_context

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# FCM's ErrorCode for "APNs certificate or web push auth key was invalid or missing" (401;
# APNS_AUTH_ERROR its former name): the Firebase project's setting for its iOS (web) apps,
# not the service account, which its other tokens still accept.
THIRD_PARTY_AUTH_ERRORS = frozenset({"THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR"})
# FCM: "Maximum payload for both message types is 4096 bytes"; fanout counts the message's
# notification and data as compact JSON (what reaches the app).
MAX_PAYLOAD_BYTES = 4096

Prepared = tuple[dict[str, Any], EventTokens | None]


class _TlsAdapter(HTTPAdapter):
    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


class FcmProvider(Http2Provider[Prepared]):
    name = "fcm"
    platforms = frozenset({"fcm"})

    def __init__(
        self,
        *,
        service_account_info: dict[str, Any],
        endpoint: str,
        ca_file: str | None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.project_id = str(service_account_info["project_id"])
        self.endpoint = endpoint.rstrip("/")
        # google-auth signs the assertion and posts it to the file's own token_uri.
        self._credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            service_account_info, scopes=[SCOPE]
        )
        session = requests.Session()
        # Our TLS context (system store + FANOUT_TLS_CA_FILE) on the adapter: requests
        # lets REQUESTS_CA_BUNDLE override session.verify, but only adds to a context.
        session.mount("https://", _TlsAdapter(tls_context(ca_file)))
        self._session = session
        self._token_request = Request(session)
        self._token_lock = asyncio.Lock()
        self.tokens_fetched = 0
        self._fetch_failed: tuple[float, Exception] | None = None  # when, and how
        self._accepted_token: str | None = None  # the last access token FCM accepted

    def credential(self, device: Device) -> str:
        return self.project_id  # one service account per project

    async def access_token(self) -> str:
        """Cached until google-auth considers it near expiry; fetched by one coroutine.
        A fetch that failed is not tried again before the breaker's cool-down is over (its
        probe tries): the senders in flight meanwhile take the failure as theirs. Each asking
        again, one after another, cost 40 refused assertions for 40 requests in flight."""
        if not self._credentials.valid:
            async with self._token_lock:
                if not self._credentials.valid:
                    failed = self._fetch_failed
                    if failed and self.breakers.clock() - failed[0] < self.breakers.cooldown:
                        raise failed[1]
                    try:
                        # Blocking HTTP in a thread: it happens about once an hour.
                        await asyncio.to_thread(self._credentials.refresh, self._token_request)
                    except Exception as exc:
                        self._fetch_failed = (self.breakers.clock(), exc)
                        raise
                    self._fetch_failed = None
                    self.tokens_fetched += 1
        return str(self._credentials.token)

    def prepare(self, notification: RenderedNotification) -> Prepared | Outcome:
        if notification.kind == "liveactivity":  # its audience is APNs tokens only
            return Outcome(OutcomeKind.PERMANENT, reason=LIVE_ACTIVITY_NOT_HERE)
        message = fcm_message(notification, now=time.time())
        opens = self.open_minter(notification)
        # The API refuses these at publish, where the open token's room is reserved.
        if fcm_payload_bytes(message) + (JSON_OVERHEAD if opens else 0) > MAX_PAYLOAD_BYTES:
            return Outcome(OutcomeKind.PERMANENT, reason="fcm: payload over 4096 bytes")
        return message, opens

    def _refused(self, token: str) -> bool:
        """FCM answered 401 to ``token``: forget it (the next request fetches another), and
        say whether to try once more: only if FCM had accepted it (it expired or was revoked
        early; a fresh one may work). A token refused from the start is the service
        account's fault: a config error."""
        if self._credentials.token == token:  # not already replaced by another sender
            self._credentials.token = None
        return token == self._accepted_token

    async def send_one(self, prepared: Prepared, device: Device) -> Outcome:
        fields, opens = prepared
        if opens is not None:  # a data string, as FCM's data are (the app reads it there)
            data = {**fields.get("data", {}), DATA_KEY: opens.token(device.id)}
            fields = {**fields, "data": data}
        body = orjson.dumps({"message": {**fields, "token": device.token}})
        for tries_left in (1, 0):
            try:
                token = await self.access_token()
            except Exception as exc:  # the token endpoint refused the service account
                return config_error(
                    "fcm", f"cannot get an access token: {type(exc).__name__}", self.app_label
                )
            response = await self.client.post(
                f"{self.endpoint}/v1/projects/{self.project_id}/messages:send",
                content=body,
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            )
            status = response.status_code
            if status == 200:
                self._accepted_token = token
                self.accepted_one = True
                return DELIVERED
            error = _error(response.content)
            code = error.get("errorCode") or error.get("status", "")
            # A 401 for the access token (not a THIRD_PARTY_AUTH_ERROR, which says nothing
            # of it): forget it, and try once more with a fresh one if FCM had accepted it.
            if status != 401 or code in THIRD_PARTY_AUTH_ERRORS or not self._refused(token):
                break
            if not tries_left:
                break
        message = str(error.get("message", ""))
        # Only the FcmError UNREGISTERED says the token is dead. A 404 without it is no
        # token's: a path FCM does not serve (FANOUT_FCM_ENDPOINT) retired every device.
        if code == "UNREGISTERED":
            return Outcome(OutcomeKind.INVALID_TOKEN, reason="fcm: UNREGISTERED")
        if status == 404:
            return config_error(
                "fcm", "404 from FANOUT_FCM_ENDPOINT: not FCM's send method", self.app_label
            )
        if code == "INVALID_ARGUMENT" and "registration token" in message.lower():
            return Outcome(OutcomeKind.INVALID_TOKEN, reason="fcm: invalid registration token")
        # 403 SENDER_ID_MISMATCH: the token was registered for another sender (project);
        # Google: "the existing registration tokens won't work". The token's fault once
        # another device has accepted the credential, so it must not open the breaker then;
        # before, the service account may be of another project than the app's tokens.
        if code == "SENDER_ID_MISMATCH":
            if not self.accepted_one:
                return not_yet_the_tokens(
                    "fcm",
                    f"{status} SENDER_ID_MISMATCH before any push was accepted: is "
                    f"{self.project_id} the app's Firebase project?",
                    self.app_label,
                )
            return Outcome(OutcomeKind.INVALID_TOKEN, reason="fcm: SENDER_ID_MISMATCH")
        if code in THIRD_PARTY_AUTH_ERRORS:
            return config_error(
                "fcm",
                f"{status} THIRD_PARTY_AUTH_ERROR: the Firebase project's APNs key or Web Push "
                "certificate",
                self.app_label,
                every_device=False,
            )
        if status == 429 or status >= 500:
            return self.retry_later(response, code)
        if status in (401, 403):
            return config_error("fcm", f"{status} {code}", self.app_label)
        return Outcome(OutcomeKind.PERMANENT, reason=f"fcm: {status} {code}: {message[:200]}")

    async def aclose(self) -> None:
        self._session.close()
        await super().aclose()


def fcm_message(notification: RenderedNotification, *, now: float) -> dict[str, Any]:
    """The message without its token: a notification message for an alert, a data message
    (no ``notification``) for a background push; with its Android, APNs and Web Push
    blocks, then the publisher's ``fcm`` block merged in."""
    high = notification.priority == "high"
    expiration = int(now) + notification.ttl if notification.ttl else 0
    message: dict[str, Any] = {
        "data": dict(notification.data),
        "android": {
            "collapse_key": notification.collapse_key,
            "priority": "HIGH" if high else "NORMAL",  # a data message's, as asked
            "ttl": f"{notification.ttl}s",
        },
        "apns": {
            "headers": {
                "apns-collapse-id": notification.collapse_key[:64],
                "apns-expiration": str(expiration),
            }
        },
        "webpush": {
            "headers": {"TTL": str(notification.ttl), "Urgency": "high" if high else "normal"}
        },
    }
    match notification.kind:
        case "alert":
            _alert(message, notification)
        case "background":
            # FCM: data-only to iOS is allowed at apns-priority 5 only, as a background push.
            message["apns"]["headers"].update(
                {"apns-priority": "5", "apns-push-type": "background"}
            )
            message["apns"]["payload"] = {"aps": {"content-available": 1}}
        case "liveactivity":
            raise ValueError(LIVE_ACTIVITY_NOT_HERE)
        case _:
            assert_never(notification.kind)
    if notification.fcm is not None:
        message = merged(message, notification.fcm.patch())
    return message


def _alert(message: dict[str, Any], notification: RenderedNotification) -> None:
    body: dict[str, Any] = {"title": notification.title, "body": notification.body}
    if notification.image:
        body["image"] = notification.image
    message["notification"] = body
    if notification.url:
        message["data"]["url"] = notification.url
        message["webpush"]["fcm_options"] = {"link": notification.url}
    high = notification.priority == "high"
    message["apns"]["headers"].update(
        {"apns-priority": "10" if high else "5", "apns-push-type": "alert"}
    )
    if notification.thread_id:
        message["android"]["notification"] = {"tag": notification.thread_id}
    aps: dict[str, Any] = {}  # what FCM's notification does not say to an iPhone
    if notification.subtitle:
        aps["alert"] = {
            "title": notification.title,
            "subtitle": notification.subtitle,
            "body": notification.body,
        }
    for key, value in (
        ("thread-id", notification.thread_id),
        ("category", notification.action_category),
        ("interruption-level", notification.interruption_level),
        ("relevance-score", notification.relevance_score),
    ):
        if value is not None:
            aps[key] = value
    if notification.image or notification.mutable_content:
        aps["mutable-content"] = 1
    if aps:
        message["apns"]["payload"] = {"aps": aps}
    shown: dict[str, Any] = {}  # for a browser through FCM: the Notification API's options
    if notification.thread_id:
        shown["tag"] = notification.thread_id
    if notification.actions:
        shown["actions"] = [action.shown() for action in notification.actions]
    if shown:
        message["webpush"]["notification"] = shown


def fcm_payload_bytes(message: dict[str, Any]) -> int:
    """The size FCM's 4,096-byte limit is held to: the notification and data as JSON."""
    shown = {key: message[key] for key in ("notification", "data") if key in message}
    return len(orjson.dumps(shown))


def _error(body: bytes) -> dict[str, Any]:
    try:
        error = orjson.loads(body).get("error", {})
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    for detail in error.get("details", []):
        if isinstance(detail, dict) and "errorCode" in detail:
            return {**error, "errorCode": detail["errorCode"]}
    return dict(error)
