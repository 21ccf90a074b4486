"""A push service emulator (RFC 8030): checks VAPID and decrypts every payload.

Decryption uses http_ece, an implementation independent of fanout's own encryption. As
push services do, it takes at most 4,096 bytes of encrypted body (413 above), a TTL in
seconds, an Urgency of RFC 8030's four and a Topic of at most 32 base64url characters.

VAPID as RFC 8292 (section 4.2) has a push service refuse it: a push without (or with a
malformed) ``vapid`` authorization 401, one whose JWT or key is invalid, or whose key is not
the one the subscription was made with, ``vapid_refusal_status``: 403 as Google's and
Apple's push services answer, 401 as Mozilla's autopush answers every VAPID error.
"""

from __future__ import annotations

import re
import time
from typing import Any

import http_ece
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from fanout.local.emulators.base import Emulator, Receive, Scope, Send, header, read_body, respond
from fanout.providers.webpush import b64url_decode

_PATH = re.compile(r"^/wp/([A-Za-z0-9_-]+)$")
MAX_BODY_BYTES = 4096  # RFC 8030 asks push services to take at least this; they take no more
_URGENCIES = ("very-low", "low", "normal", "high")


class WebPushEmulator(Emulator):
    """Every subscription uses ``private_key``/``auth`` unless ``subscriptions`` says otherwise."""

    def __init__(self, *, private_key: ec.EllipticCurvePrivateKey, auth: bytes) -> None:
        super().__init__()
        self.private_key = private_key
        self.auth = auth
        self.subscriptions: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
        self.keep_payloads = False
        self.payloads: list[bytes] = []
        self.base_url = ""
        # As a push service answers a VAPID key it does not accept (not the one the
        # subscriptions were made with, or a key it has blocked): every push refused with
        # this status (401 or 403) while set; ``refused`` counts those requests.
        self.refuse_vapid: int | None = None
        self.refused = 0  # pushes refused for their VAPID authorization, whatever the cause
        self.requests = 0  # every request that reached it
        self.vapid_refusal_status = 403
        # Several apps' VAPID keys on one service: subscription id prefix -> the
        # applicationServerKey (base64url) the subscription was made with. A push to it
        # signed by another key is refused 403, as push services refuse a VAPID key that
        # is not the subscription's.
        self.subscription_keys: dict[str, str] = {}

    def _check_vapid(self, authorization: str | None, subscription: str) -> tuple[int, str] | None:
        """None if the VAPID authorization is good, else the status and why."""
        match = re.fullmatch(r"vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)", authorization or "")
        if match is None:
            return 401, "missing or malformed VAPID authorization"
        invalid = self.vapid_refusal_status
        for prefix, expected in self.subscription_keys.items():
            if subscription.startswith(prefix) and match.group(2) != expected:
                return invalid, "VAPID public key does not match the subscription's"
        token, key = match.groups()
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b64url_decode(key)
            )
            claims = jwt.decode(token, public, algorithms=["ES256"], audience=self.base_url)
        except (ValueError, jwt.PyJWTError) as exc:
            return invalid, f"VAPID JWT refused: {exc}"
        if claims.get("exp", 0) > time.time() + 24 * 3600 or not claims.get("sub"):
            return invalid, "VAPID claims refused"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        self.requests += 1
        match = _PATH.match(scope["path"])
        if scope["method"] != "POST" or match is None:
            await respond(send, 404)
            return
        subscription = match.group(1)
        authorization = header(scope, "authorization")
        if (refused := self._check_vapid(authorization, subscription)) is not None:
            self.refused += 1
            await respond(send, refused[0], {"error": refused[1]})
            return
        if self.refuse_vapid is not None:
            self.refused += 1
            await respond(send, self.refuse_vapid, {"error": "VAPID key not accepted"})
            return
        if not re.fullmatch(r"[0-9]+", header(scope, "ttl") or ""):
            await respond(send, 400, {"error": "TTL header required, in seconds"})
            return
        if (header(scope, "urgency") or "normal") not in _URGENCIES:
            await respond(send, 400, {"error": "Urgency must be very-low, low, normal or high"})
            return
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", header(scope, "topic") or "t"):
            await respond(send, 400, {"error": "Topic: at most 32 base64url characters"})
            return
        if header(scope, "content-encoding") != "aes128gcm":
            await respond(send, 415, {"error": "aes128gcm required"})
            return
        if len(body) > MAX_BODY_BYTES:
            await respond(send, 413, {"error": "payload too large"})
            return
        private_key, auth = self.subscriptions.get(subscription, (self.private_key, self.auth))
        try:
            plaintext = http_ece.decrypt(
                body, private_key=private_key, auth_secret=auth, version="aes128gcm"
            )
        except Exception as exc:
            await respond(send, 400, {"error": f"cannot decrypt: {exc!r}"})
            return
        if (forced := self.forced(subscription)) is not None:
            status, answer, headers = forced
            await respond(send, status, answer or None, headers)
            return
        if self.keep_payloads:
            self.payloads.append(plaintext)
        wanted = self.keep_accepted or self.open_tokens is not None  # not parsed under load
        read = _json_or_bytes(plaintext) if wanted else None
        signer = (authorization or "").rpartition("k=")[2] if self.signers is not None else ""
        self.accept(scope, subscription, header(scope, "topic") or "", read, signer)
        await respond(send, 201, None, {"location": f"{self.base_url}/msg/{subscription}"})


def _json_or_bytes(plaintext: bytes) -> Any:
    """What the service worker would read: JSON as parsed, anything else as sent."""
    try:
        return orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        return plaintext
