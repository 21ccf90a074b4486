"""APNs: HTTP/2 to Apple with token-based (ES256 JWT) authentication.

https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
"""

from __future__ import annotations

import time
from typing import Any, assert_never

import jwt
import orjson

from fanout.notification import Kind, RenderedNotification
from fanout.open_tokens import JSON_OVERHEAD, EventTokens, with_token
from fanout.overrides import merged
from fanout.providers.base import Device, Outcome, OutcomeKind, config_error, not_yet_the_tokens
from fanout.providers.http2 import Http2Provider

# Apple refuses a token older than an hour and one refreshed more than every 20 minutes.
JWT_LIFETIME_SECONDS = 40 * 60
# Apple's limit for a payload of every push type but VoIP (5 KB, which fanout does not send).
MAX_PAYLOAD_BYTES = 4096
_INVALID_TOKEN_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"}
_CONFIG_REASONS = {
    "InvalidProviderToken", "MissingProviderToken", "BadCertificate", "BadCertificateEnvironment",
    "Forbidden", "TopicDisallowed", "BadTopic", "MissingTopic",
}  # fmt: skip

Prepared = tuple[bytes, dict[str, str], EventTokens | None]


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
        opens = self.open_minter(notification)
        # The API refuses these at publish, where the open token's room is reserved.
        if len(payload) + (JSON_OVERHEAD if opens else 0) > MAX_PAYLOAD_BYTES:
            return Outcome(OutcomeKind.PERMANENT, reason="apns: payload over 4096 bytes")
        return payload, apns_headers(notification, self.topic, now=time.time()), opens

    async def send_one(self, prepared: Prepared, device: Device) -> Outcome:
        payload, headers, opens = prepared
        if opens is not None:  # a custom key beside aps, where an app reads its data
            payload = with_token(payload, opens.token(device.id))
        response = await self.client.post(
            f"{self.endpoint}/3/device/{device.token}",
            content=payload,
            headers={**headers, "authorization": f"bearer {self.provider_token()}"},
        )
        status = response.status_code
        if status == 200:
            self.accepted_one = True
            return Outcome(OutcomeKind.OK)
        reason = _reason(response.content)
        if reason == "DeviceTokenNotForTopic" and not self.accepted_one:
            return not_yet_the_tokens(
                "apns",
                f"{status} DeviceTokenNotForTopic before any push was accepted: is "
                f"{self.topic} the app's bundle id?",
                self.app_label,
            )
        if status == 410 or reason in _INVALID_TOKEN_REASONS:
            return Outcome(OutcomeKind.INVALID_TOKEN, reason=f"apns: {reason or status}")
        if reason == "ExpiredProviderToken":
            self._jwt = ""  # sign a fresh one; this push may succeed with it
            return Outcome(OutcomeKind.RETRY, reason="apns: ExpiredProviderToken")
        if status == 429 or status >= 500:
            return self.retry_later(response, reason)
        if status == 403 or reason in _CONFIG_REASONS:
            return config_error("apns", f"{status} {reason}", self.app_label)
        return Outcome(OutcomeKind.PERMANENT, reason=f"apns: {status} {reason}")


def apns_kind(kind: Kind) -> tuple[str, str]:
    """A kind's ``apns-push-type`` and the suffix its ``apns-topic`` carries after the
    bundle id (Apple routes some push types by topic: ".push-type.liveactivity")."""
    match kind:
        case "alert":
            return "alert", ""
        case "background":
            return "background", ""
        case "liveactivity":
            return "liveactivity", ".push-type.liveactivity"
        case _:
            assert_never(kind)


def apns_headers(notification: RenderedNotification, topic: str, *, now: float) -> dict[str, str]:
    """The request headers every device of this rendering shares (no authorization)."""
    push_type, topic_suffix = apns_kind(notification.kind)
    match notification.kind:
        case "alert":
            priority = "10" if notification.priority == "high" else "5"
        case "background":
            priority = "5"  # Apple: "It is an error to use priority 10" for content-available only
        case "liveactivity":
            # 5 unless 10 is asked: Apple budgets priority-10 updates per hour, and a
            # device past its budget has them throttled (the status counts them).
            priority = "10" if notification.priority == "high" else "5"
        case _:
            assert_never(notification.kind)
    headers = {
        "apns-topic": topic + topic_suffix,
        "apns-push-type": push_type,
        "apns-priority": priority,
        "apns-expiration": str(int(now) + notification.ttl if notification.ttl else 0),
        # A later push with the same collapse id replaces this one on the device.
        "apns-collapse-id": notification.collapse_key.encode()[:64].decode(errors="ignore"),
    }
    if notification.apns is not None:
        headers.update(notification.apns.headers)
    return headers


def apns_payload(notification: RenderedNotification) -> dict[str, Any]:
    """The JSON Apple delivers: ``aps`` as the kind has it, the data beside it, then the
    publisher's ``apns.payload`` merged in."""
    extra: dict[str, Any] = dict(notification.data)
    match notification.kind:
        case "alert":
            aps = _alert_aps(notification)
            if notification.url:
                extra["url"] = notification.url
            if notification.image:
                extra["image"] = notification.image
        case "background":
            # Nothing shown: no alert, sound or badge; the app is woken with the data.
            aps = {"content-available": 1}
        case "liveactivity":
            aps = _live_activity_aps(notification)
        case _:
            assert_never(notification.kind)
    payload = {"aps": aps, **extra}
    if notification.apns is not None:
        payload = merged(payload, notification.apns.payload)
    return payload


def _alert_aps(notification: RenderedNotification) -> dict[str, Any]:
    alert = {"title": notification.title}
    if notification.subtitle:
        alert["subtitle"] = notification.subtitle
    alert["body"] = notification.body
    aps: dict[str, Any] = {"alert": alert}
    if notification.badge is not None:
        aps["badge"] = notification.badge
    if notification.sound:
        # Apple: "For critical alerts, use the sound dictionary instead"; full volume.
        critical = notification.interruption_level == "critical"
        sound = {"critical": 1, "name": notification.sound, "volume": 1.0}
        aps["sound"] = sound if critical else notification.sound
    if notification.thread_id:
        aps["thread-id"] = notification.thread_id
    if notification.action_category:
        aps["category"] = notification.action_category  # the buttons the app registered
    if notification.interruption_level:
        aps["interruption-level"] = notification.interruption_level
    if notification.relevance_score is not None:
        aps["relevance-score"] = notification.relevance_score
    if notification.image or notification.mutable_content:
        aps["mutable-content"] = 1  # lets a notification service extension fetch the image
    return aps


def _live_activity_aps(notification: RenderedNotification) -> dict[str, Any]:
    """A Live Activity's aps as ActivityKit reads it: timestamp (the device keeps the
    newest), event, content-state, its dates, relevance, the alert, and a start's
    attributes."""
    live = notification.live_activity
    assert live is not None  # the model requires it for this kind
    aps: dict[str, Any] = {"timestamp": live.timestamp, "event": live.event}
    optional = (
        ("content-state", live.content_state),
        ("stale-date", live.stale_date),
        ("dismissal-date", live.dismissal_date),
        ("relevance-score", notification.relevance_score),
        ("attributes-type", live.attributes_type),
        ("attributes", live.attributes),
    )
    aps.update((key, value) for key, value in optional if value is not None)
    if notification.title is not None:
        aps["alert"] = {"title": notification.title, "body": notification.body}
    return aps


def _reason(body: bytes) -> str:
    try:
        return str(orjson.loads(body).get("reason", "")) if body else ""
    except (orjson.JSONDecodeError, AttributeError):
        return ""
