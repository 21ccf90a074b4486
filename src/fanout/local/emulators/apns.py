"""An APNs emulator: checks the provider JWT, headers and payload as Apple does."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import jwt
import orjson

from fanout.config import MAX_PAYLOAD_BYTES
from fanout.local.emulators.base import Emulator, Receive, Scope, Send, header, read_body, respond

_PATH = re.compile(r"^/3/device/([0-9A-Fa-f]+)$")


class ApnsEmulator(Emulator):
    def __init__(self, *, public_keys: dict[str, Any], team_id: str, topic: str) -> None:
        super().__init__()
        self.public_keys = public_keys  # key id -> the .p8 key's public half
        self.team_id = team_id
        self.topic = topic
        self.jwts_seen: set[str] = set()
        self._verified: dict[str, float] = {}
        # As Apple answers a revoked signing key: every request refused with this reason
        # (e.g. "InvalidProviderToken") while set; ``refused`` counts those requests.
        self.refuse_credential: str | None = None
        self.refused = 0

    def _check_provider_token(self, authorization: str | None) -> str | None:
        """None if the JWT is good, else the reason Apple would give."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return "MissingProviderToken"
        token = authorization[7:]
        self.jwts_seen.add(token)
        if self.refuse_credential is not None:
            self.refused += 1
            return self.refuse_credential
        issued = self._verified.get(token)
        if issued is None:
            try:
                key = self.public_keys[jwt.get_unverified_header(token)["kid"]]
                claims = jwt.decode(token, key, algorithms=["ES256"], options={"verify_iat": True})
            except (jwt.PyJWTError, KeyError):
                return "InvalidProviderToken"
            if claims.get("iss") != self.team_id:
                return "InvalidProviderToken"
            issued = self._verified[token] = float(claims["iat"])
        if time.time() - issued > 3600:
            return "ExpiredProviderToken"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        match = _PATH.match(scope["path"])
        body = await read_body(receive)
        if scope["method"] != "POST" or match is None:
            await respond(send, 404 if match is None else 405, {"reason": "BadPath"})
            return
        token = match.group(1)
        if (problem := self._check_provider_token(header(scope, "authorization"))) is not None:
            await respond(send, 403, {"reason": problem})
            return
        if header(scope, "apns-topic") != self.topic:
            await respond(send, 400, {"reason": "BadTopic"})
            return
        if header(scope, "apns-push-type") not in ("alert", "background"):
            await respond(send, 400, {"reason": "InvalidPushType"})
            return
        if len(body) > MAX_PAYLOAD_BYTES:
            await respond(send, 413, {"reason": "PayloadTooLarge"})
            return
        try:
            payload = orjson.loads(body)
            assert isinstance(payload.get("aps"), dict)
        except (orjson.JSONDecodeError, AttributeError, AssertionError):
            await respond(send, 400, {"reason": "BadPayload"})
            return
        if (forced := self.forced(token)) is not None:
            status, answer, headers = forced
            await respond(send, status, answer or None, headers)
            return
        self.ledger.record(token, header(scope, "apns-collapse-id") or "")
        await respond(send, 200, None, {"apns-id": secrets.token_hex(16)})
