"""An APNs emulator: checks the provider JWT, headers and payload as Apple does.

The reasons are Apple's (developer.apple.com, "Handling error responses from APNs"), and
so are the rules of each push type: a background push has ``content-available`` and no
alert, sound or badge, at priority 5 ("It is an error to use priority 10"); a Live
Activity's topic is the bundle id with ``.push-type.liveactivity``, its aps an ``event``,
a ``timestamp`` and (but to end it) a ``content-state``. Where Apple documents the rule
but not the reason it answers, the push type's mismatch is ``InvalidPushType`` and a
malformed payload ``BadPayload``.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from fanout.local.emulators.base import Emulator, Receive, Scope, Send, header, read_body, respond

_PATH = re.compile(r"^/3/device/([0-9A-Fa-f]+)$")
MAX_PAYLOAD_BYTES = 4096  # Apple's, for every push type but VoIP
# The push types this emulator takes, with the suffix Apple wants on their topic.
TOPIC_SUFFIXES = {"alert": "", "background": "", "liveactivity": ".push-type.liveactivity"}
_SHOWN = ("alert", "sound", "badge")
_LIVE_ACTIVITY_EVENTS = ("start", "update", "end")


class ApnsEmulator(Emulator):
    def __init__(
        self,
        *,
        public_keys: dict[str, Any],
        team_id: str,
        topic: str,
        environment: str = "production",
        token_environments: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.public_keys = public_keys  # key id -> the .p8 key's public half
        self.team_id = team_id
        self.topic = topic
        # Apple's two endpoints: a token is issued for one environment (a debug build's
        # for the sandbox) and the other answers 400 BadDeviceToken. ``token_environments``
        # (token -> environment, shared by both emulators) says which a token is for; a
        # token it does not name is taken as this emulator's.
        self.environment = environment
        self.token_environments = token_environments if token_environments is not None else {}
        self.jwts_seen: set[str] = set()
        self._verified: dict[str, tuple[float, str]] = {}  # JWT -> (iat, key id)
        # As Apple answers a revoked signing key: every request refused with this reason
        # (e.g. "InvalidProviderToken") while set; ``refused`` counts those requests.
        self.refuse_credential: str | None = None
        self.refused = 0
        # Several apps' keys on one emulator, as Apple serves every team: key id -> the
        # (team id, bundle id) it signs for (a key not named here: ``team_id``, ``topic``);
        # token -> the bundle id of the app it was issued to (a push for it under another
        # topic: 400 DeviceTokenNotForTopic); key ids revoked (403 InvalidProviderToken,
        # counted in ``refused``).
        self.key_apps: dict[str, tuple[str, str]] = {}
        self.token_topics: dict[str, str] = {}
        self.revoked_keys: set[str] = set()
        self._revoke_countdown: dict[str, int] = {}  # key id -> pushes before it is revoked

    def revoke_after(self, key_id: str, pushes: int) -> None:
        """Revoke ``key_id`` once it has signed ``pushes`` more accepted pushes: a key
        revoked in the middle of an event's send."""
        self._revoke_countdown[key_id] = pushes

    def _check_provider_token(self, authorization: str | None) -> tuple[str | None, str]:
        """(None if the JWT is good, else the reason Apple would give; its key id)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return "MissingProviderToken", ""
        token = authorization[7:]
        self.jwts_seen.add(token)
        if self.refuse_credential is not None:
            self.refused += 1
            return self.refuse_credential, ""
        verified = self._verified.get(token)
        if verified is None:
            try:
                key_id = jwt.get_unverified_header(token)["kid"]
                key = self.public_keys[key_id]
                claims = jwt.decode(token, key, algorithms=["ES256"], options={"verify_iat": True})
            except (jwt.PyJWTError, KeyError):
                return "InvalidProviderToken", ""
            if claims.get("iss") != self.key_apps.get(key_id, (self.team_id, ""))[0]:
                return "InvalidProviderToken", key_id
            verified = self._verified[token] = (float(claims["iat"]), key_id)
        issued, key_id = verified
        if key_id in self.revoked_keys:
            self.refused += 1
            return "InvalidProviderToken", key_id
        if time.time() - issued > 3600:
            return "ExpiredProviderToken", key_id
        return None, key_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        match = _PATH.match(scope["path"])
        body = await read_body(receive)
        if scope["method"] != "POST" or match is None:
            await respond(send, 404 if match is None else 405, {"reason": "BadPath"})
            return
        token = match.group(1)
        problem, key_id = self._check_provider_token(header(scope, "authorization"))
        if problem is not None:
            await respond(send, 403, {"reason": problem})
            return
        if self.token_environments.get(token.lower(), self.environment) != self.environment:
            await respond(send, 400, {"reason": "BadDeviceToken"})
            return
        topic = self.key_apps.get(key_id, ("", self.topic))[1]
        payload = self._check_request(scope, body, topic)
        if isinstance(payload, Refusal):
            await respond(send, payload.status, {"reason": payload.reason})
            return
        if self.token_topics.get(token.lower(), topic) != topic:
            await respond(send, 400, {"reason": "DeviceTokenNotForTopic"})
            return
        if (forced := self.forced(token)) is not None:
            status, answer, headers = forced
            await respond(send, status, answer or None, headers)
            return
        self.accept(scope, token, header(scope, "apns-collapse-id") or "", payload, key_id)
        if key_id in self._revoke_countdown:
            self._revoke_countdown[key_id] -= 1
            if self._revoke_countdown[key_id] <= 0:
                del self._revoke_countdown[key_id]
                self.revoked_keys.add(key_id)
        await respond(send, 200, None, {"apns-id": secrets.token_hex(16)})

    def _check_request(self, scope: Scope, body: bytes, topic: str) -> dict[str, Any] | Refusal:
        """The payload, or how Apple would refuse the request (``topic``: the signing
        key's bundle id)."""
        push_type = header(scope, "apns-push-type") or "alert"
        if push_type not in TOPIC_SUFFIXES:
            return Refusal(400, "InvalidPushType")
        if header(scope, "apns-topic") != topic + TOPIC_SUFFIXES[push_type]:
            return Refusal(400, "BadTopic")
        priority = header(scope, "apns-priority") or "10"
        if priority not in ("1", "5", "10"):
            return Refusal(400, "BadPriority")
        if not re.fullmatch(r"[0-9]+", header(scope, "apns-expiration") or "0"):
            return Refusal(400, "BadExpirationDate")
        if len((header(scope, "apns-collapse-id") or "").encode()) > 64:
            return Refusal(400, "BadCollapseId")
        if not body:
            return Refusal(400, "PayloadEmpty")
        if len(body) > MAX_PAYLOAD_BYTES:
            return Refusal(413, "PayloadTooLarge")
        try:
            payload = orjson.loads(body)
            aps = payload["aps"]
            assert isinstance(aps, dict)
        except (orjson.JSONDecodeError, KeyError, TypeError, AssertionError):
            return Refusal(400, "BadPayload")
        return _check_push_type(push_type, priority, aps) or payload


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


def _check_push_type(push_type: str, priority: str, aps: dict[str, Any]) -> Refusal | None:
    """The payload's shape against its push type."""
    shown = [key for key in _SHOWN if key in aps]
    if push_type == "alert" and not shown:
        return Refusal(400, "InvalidPushType")  # an alert push must alert, sound or badge
    if push_type == "background":
        if priority == "10":
            return Refusal(400, "BadPriority")
        if shown or aps.get("content-available") != 1:
            return Refusal(400, "InvalidPushType")
    if push_type == "liveactivity":
        event = aps.get("event")
        if event not in _LIVE_ACTIVITY_EVENTS or not isinstance(aps.get("timestamp"), int):
            return Refusal(400, "BadPayload")
        if event != "end" and not isinstance(aps.get("content-state"), dict):
            return Refusal(400, "BadPayload")
        if event == "start" and not ("attributes-type" in aps and "attributes" in aps):
            return Refusal(400, "BadPayload")
    return None
