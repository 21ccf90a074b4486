"""APNs: HTTP/2 to Apple with token-based (ES256 JWT) authentication.

https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import orjson

from fanout.config import MAX_PAYLOAD_BYTES
from fanout.notification import RenderedNotification
from fanout.providers.base import Device, Outcome, OutcomeKind, config_error
from fanout.providers.http2 import Http2Provider

# Apple refuses a token older than an hour and one refreshed more than every 20 minutes.
JWT_LIFETIME_SECONDS = 40 * 60
_INVALID_TOKEN_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"}
_CONFIG_REASONS = {
    "InvalidProviderToken", "MissingProviderToken", "BadCertificate", "BadCertificateEnvironment",
    "Forbidden", "TopicDisallowed", "BadTopic", "MissingTopic",
}  # fmt: skip

Prepared = tuple[bytes, dict[str, str]]


class ApnsProvider(Http2Provider[Prepared]):
    name = "apns"
    platforms = frozenset({"apns"})

    def __init__(
        self, *, key_pem: str, key_id: str, team_id: str, topic: str, endpoint: str, **base: Any
    ) -> None:
        super().__init__(**base)
        self._key = key_pem
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self._credential = f"{team_id}/{key_id}/{topic}"
        self.endpoint = endpoint.rstrip("/")
        self._jwt = ""
        self._jwt_issued = 0.0
        self.jwts_signed = 0

    def credential(self, device: Device) -> str:
        # The signing key and the topic: BadTopic/TopicDisallowed are about the topic.
        return self._credential

    def provider_token(self) -> str:
        """The ES256 JWT, signed once and reused until well inside Apple's hour."""
        now = time.time()
        if not self._jwt or now - self._jwt_issued > JWT_LIFETIME_SECONDS:
            self._jwt = jwt.encode(
                {"iss": self.team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self.key_id},
            )
            self._jwt_issued = now
            self.jwts_signed += 1
        return self._jwt

    def prepare(self, notification: RenderedNotification) -> Prepared | Outcome:
        payload = orjson.dumps(apns_payload(notification))
        if len(payload) > MAX_PAYLOAD_BYTES:
            return Outcome(OutcomeKind.PERMANENT, reason="apns: payload over 4096 bytes")
        expiration = int(time.time()) + notification.ttl if notification.ttl else 0
        headers = {
            "apns-topic": self.topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if notification.priority == "high" else "5",
            "apns-expiration": str(expiration),
            # A later push with the same collapse id replaces this one on the device.
            "apns-collapse-id": notification.collapse_key.encode()[:64].decode(errors="ignore"),
        }
        return payload, headers

    async def send_one(self, prepared: Prepared, device: Device) -> Outcome:
        payload, headers = prepared
        response = await self.client.post(
            f"{self.endpoint}/3/device/{device.token}",
            content=payload,
            headers={**headers, "authorization": f"bearer {self.provider_token()}"},
        )
        status = response.status_code
        if status == 200:
            return Outcome(OutcomeKind.OK)
        reason = _reason(response.content)
        if status == 410 or reason in _INVALID_TOKEN_REASONS:
            return Outcome(OutcomeKind.INVALID_TOKEN, reason=f"apns: {reason or status}")
        if reason == "ExpiredProviderToken":
            self._jwt = ""  # sign a fresh one; this push may succeed with it
            return Outcome(OutcomeKind.RETRY, reason="apns: ExpiredProviderToken")
        if status == 429 or status >= 500:
            return self.retry_later(response, reason)
        if status == 403 or reason in _CONFIG_REASONS:
            return config_error("apns", f"{status} {reason}")
        return Outcome(OutcomeKind.PERMANENT, reason=f"apns: {status} {reason}")


def apns_payload(notification: RenderedNotification) -> dict[str, Any]:
    alert = {"title": notification.title, "body": notification.body}
    aps: dict[str, Any] = {"alert": alert}
    if notification.badge is not None:
        aps["badge"] = notification.badge
    if notification.sound:
        aps["sound"] = notification.sound
    if notification.image:
        aps["mutable-content"] = 1  # lets a notification service extension fetch the image
    extra: dict[str, Any] = dict(notification.data)
    if notification.url:
        extra["url"] = notification.url
    if notification.image:
        extra["image"] = notification.image
    return {"aps": aps, **extra}


def _reason(body: bytes) -> str:
    try:
        return str(orjson.loads(body).get("reason", "")) if body else ""
    except (orjson.JSONDecodeError, AttributeError):
        return ""
