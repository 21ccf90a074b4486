"""An FCM HTTP v1 emulator, with the OAuth2 token endpoint a service account posts to.

It refuses what FCM's reference refuses (projects.messages): fields a Message does not
have, a data value that is not a string (every data map), a reserved data key, an
Android priority other than NORMAL or HIGH, a data-only message to iOS at apns-priority
10, and a message whose notification and data pass 4,096 bytes: 400 INVALID_ARGUMENT,
its message naming the field as FCM's does.

It refuses fanout's credential as Google does: an assertion not signed by a key of the
service account (deleted, or never its own) at the token endpoint, 400 invalid_grant; an
access token it did not issue (or revoked), 401 UNAUTHENTICATED; a service account without
the permission to send for the project, 403 PERMISSION_DENIED. A token of another sender is
403 SENDER_ID_MISMATCH, and an iOS app's token of a project without an APNs key is 401
THIRD_PARTY_AUTH_ERROR (FCM's ErrorCode reference): the token's and the project's APNs
setting's fault, not the service account's. A path that is not the send method gets the
404 page Google's front end answers with, no FCM error in it.
"""

from __future__ import annotations

import collections
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import jwt
import orjson

from fanout.local.emulators.base import Emulator, Receive, Scope, Send, header, read_body, respond

_SEND = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
_MESSAGE_FIELDS = {
    "name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token",
    "topic", "condition",
}  # fmt: skip
_RESERVED_KEYS = ("from", "message_type")
_RESERVED_PREFIXES = ("google.", "gcm.notification.")
MAX_PAYLOAD_BYTES = 4096  # "Maximum payload for both message types is 4096 bytes"


class RequestRate:
    """FCM's quota as the emulator keeps it: 429 above ``rate`` sends a second.

    A bucket of one second's sends, refilled continuously; deliberately its own code, not
    fanout's ``ratelimit``/``quota``, so a bench measures fanout against an independent
    meter. Counts what it accepted and refused, per wall-clock second.
    """

    def __init__(self, rate: float, *, retry_after: float = 1.0) -> None:
        self.rate = rate
        self.retry_after = retry_after
        self._tokens = rate
        self._updated = time.monotonic()
        self.accepted: collections.Counter[int] = collections.Counter()
        self.refused: collections.Counter[int] = collections.Counter()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        second = int(time.time())
        if self._tokens >= 1:
            self._tokens -= 1
            self.accepted[second] += 1
            return True
        self.refused[second] += 1
        return False


class FcmEmulator(Emulator):
    def __init__(self, *, project_id: str, client_email: str, public_key: Any) -> None:
        super().__init__()
        self.project_id = project_id
        self.client_email = client_email
        self.public_key = public_key  # the service account's, to check its assertions
        self.issued_tokens: set[str] = set()
        self.token_requests = 0
        self.base_url = ""  # set once served: the token endpoint's audience
        self.quota: RequestRate | None = None  # limit_rate(): 429 above a rate
        # As FCM answers while it refuses fanout's credential, every send is refused with
        # this status while set: 401 UNAUTHENTICATED (an access token it no longer honours)
        # or 403 PERMISSION_DENIED (a service account without the messaging permission).
        # ``refused`` counts those requests.
        self.refuse_credential: int | None = None
        # Sends refused for fanout's credential (this switch, an access token not issued or
        # revoked, a project or a permission the service account does not have).
        self.refused = 0
        self.requests = 0  # every request to the send method (the token endpoint apart)
        # As Google's token endpoint answers an assertion signed with a deleted key: every
        # one refused (400 invalid_grant) while set; ``refused_assertions`` counts every
        # assertion refused (this switch, or one no key of the account signed).
        self.refuse_service_account = False
        self.refused_assertions = 0
        # Service accounts (client_email) without the permission to send for their project
        # (cloudmessaging.messages.create): each send refused 403 PERMISSION_DENIED.
        self.without_permission: set[str] = set()
        # Tokens of iOS apps, and the projects with no APNs key uploaded to Firebase: FCM
        # hands an iOS app's push to APNs with the project's key, and without one answers
        # 401 THIRD_PARTY_AUTH_ERROR for that token; its Android tokens are not concerned.
        self.ios_tokens: set[str] = set()
        self.projects_without_apns_key: set[str] = set()
        # Tokens an app registered for another sender (another Firebase project): a send to
        # one is refused 403 SENDER_ID_MISMATCH, the token's fault, not the credential's.
        self.other_sender_tokens: set[str] = set()
        # Several apps' Firebase projects on one emulator, as FCM serves every project:
        # project id -> (its service account's client_email, public key); an access token
        # is good for the project of the account it was issued to, and a registration token
        # (``token_projects``: token -> project) sent from another project is refused 403
        # SENDER_ID_MISMATCH. ``project_id``'s account is always known.
        self.projects: dict[str, tuple[str, Any]] = {project_id: (client_email, public_key)}
        self.token_projects: dict[str, str] = {}
        self._access: dict[str, tuple[str, str]] = {}  # access token -> project, account

    def open_token_of(self, payload: Any) -> str | None:
        """FCM hands the app the message's data: the open token is a data string."""
        data = payload.get("data") if isinstance(payload, dict) else None
        return super().open_token_of(data)

    def limit_rate(self, per_second: float, *, retry_after: float = 1.0) -> RequestRate:
        """Answer 429 (QUOTA_EXCEEDED, Retry-After) to sends above ``per_second``."""
        self.quota = RequestRate(per_second, retry_after=retry_after)
        return self.quota

    def revoke_access_tokens(self) -> None:
        """Refuse (401) every access token issued so far, as FCM refuses one that expired
        early or was revoked; the token endpoint grants new ones."""
        self.issued_tokens.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["method"] == "POST" and scope["path"] == "/token":
            await self._token(body, send)
            return
        self.requests += 1
        match = _SEND.match(scope["path"])
        if scope["method"] != "POST" or match is None:
            await _not_served(send, scope["path"])
            return
        access_token = (header(scope, "authorization") or "").removeprefix("Bearer ")
        project, account = self._access.get(access_token, (self.project_id, self.client_email))
        refused = self.refuse_credential
        if refused is None and access_token not in self.issued_tokens:
            refused = 401
        elif refused is None and (match.group(1) != project or account in self.without_permission):
            refused = 403
        if refused is not None:
            self.refused += 1
            await respond(send, refused, _CREDENTIAL_REFUSED[refused])
            return
        try:
            message = orjson.loads(body)["message"]
            token = str(message["token"])
            collapse_key = str(message.get("android", {}).get("collapse_key", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            await respond(send, 400, _error(400, "INVALID_ARGUMENT", "bad message"))
            return
        if (problem := check_message(message)) is not None:
            await respond(send, 400, _error(400, "INVALID_ARGUMENT", problem))
            return
        if token in self.other_sender_tokens or self.token_projects.get(token, project) != project:
            mismatch = _error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")
            await respond(send, 403, mismatch)
            return
        if token in self.ios_tokens and project in self.projects_without_apns_key:
            no_apns_key = _error(
                401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service",
                "THIRD_PARTY_AUTH_ERROR",
            )  # fmt: skip
            await respond(send, 401, no_apns_key)
            return
        if self.quota is not None and not self.quota.allow():
            await respond(
                send,
                429,
                _error(429, "RESOURCE_EXHAUSTED", "quota exceeded", "QUOTA_EXCEEDED"),
                {"retry-after": f"{self.quota.retry_after:g}"},
            )
            return
        if (forced := self.forced(token)) is not None:
            status, answer, headers = forced
            await respond(send, status, answer, headers)
            return
        self.accept(scope, token, collapse_key, message, project)
        await respond(send, 200, {"name": f"projects/{project}/messages/{secrets.token_hex(8)}"})

    async def _token(self, body: bytes, send: Send) -> None:
        """RFC 7523: a JWT signed by the service account, exchanged for an access token."""
        self.token_requests += 1
        if self.refuse_service_account:
            self.refused_assertions += 1
            await respond(
                send, 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
            return
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        try:
            issuer = jwt.decode(form["assertion"], options={"verify_signature": False})["iss"]
            [(project, public_key)] = [
                (project, key) for project, (email, key) in self.projects.items() if email == issuer
            ]
            claims = jwt.decode(
                form["assertion"],
                public_key,
                algorithms=["RS256"],
                # google-auth signs for Google's endpoint, whatever token_uri it posts to.
                audience="https://oauth2.googleapis.com/token",
            )
            assert "firebase.messaging" in claims.get("scope", "")
            assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        except (KeyError, ValueError, AssertionError, jwt.PyJWTError) as exc:
            self.refused_assertions += 1
            await respond(send, 400, {"error": "invalid_grant", "error_description": str(exc)})
            return
        token = f"ya29.{secrets.token_urlsafe(24)}"
        self.issued_tokens.add(token)
        self._access[token] = (project, issuer)
        await respond(
            send, 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        )


def check_message(message: dict[str, Any]) -> str | None:
    """What FCM would say refusing the message, or None."""
    for name in message:
        if name not in _MESSAGE_FIELDS:
            return f"Invalid JSON payload received. Unknown name \"{name}\" at 'message'"
    for where, data in (
        ("message.data", message.get("data")),
        ("message.android.data", (message.get("android") or {}).get("data")),
        ("message.webpush.data", (message.get("webpush") or {}).get("data")),
    ):
        for i, (key, value) in enumerate((data or {}).items()):
            if not isinstance(value, str):
                return f"Invalid value at '{where}[{i}].value' (TYPE_STRING), {value}"
            if key in _RESERVED_KEYS or key.startswith(_RESERVED_PREFIXES):
                return f"Invalid data key '{key}' at '{where}': a reserved word"
    android = message.get("android") or {}
    if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
        return "Invalid value at 'message.android.priority' (TYPE_ENUM)"
    if not re.fullmatch(r"[0-9]+(\.[0-9]{1,9})?s", android.get("ttl", "0s")):
        return (
            "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)"
        )
    apns_priority = ((message.get("apns") or {}).get("headers") or {}).get("apns-priority")
    if "notification" not in message and apns_priority == "10":
        # "When sending payloads containing only data fields to iOS devices, only normal
        # priority ("apns-priority": "5") is allowed in ApnsConfig."
        return "A data message to iOS may only have apns-priority 5"
    shown = {key: message[key] for key in ("notification", "data") if key in message}
    if len(orjson.dumps(shown)) > MAX_PAYLOAD_BYTES:
        return "Message is too big"
    return None


def _error(code: int, status: str, message: str, error_code: str | None = None) -> dict[str, Any]:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code or status}]  # fmt: skip
    return {"error": {"code": code, "message": message, "status": status, "details": details}}


# FCM's answers to a credential it refuses (they carry no FcmError detail).
_CREDENTIAL_REFUSED = {
    401: {"error": {"code": 401, "status": "UNAUTHENTICATED",
                    "message": "Request had invalid authentication credentials."}},
    403: {"error": {"code": 403, "status": "PERMISSION_DENIED",
                    "message": "Permission 'cloudmessaging.messages.create' denied on resource"}},
}  # fmt: skip


async def _not_served(send: Send, path: str) -> None:
    """What Google's front end answers a URL no API serves: its HTML 404 page."""
    page = (
        "<!DOCTYPE html>\n<title>Error 404 (Not Found)!!1</title>\n"
        f"<p>The requested URL {path} was not found on this server."
    )
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"text/html; charset=UTF-8")],
        }
    )
    await send({"type": "http.response.body", "body": page.encode()})  # fmt: skip


def fcm_error(
    code: int, status: str, message: str, error_code: str | None = None
) -> dict[str, Any]:
    """An error body as FCM writes it, for ``answer_with``."""
    return _error(code, status, message, error_code)
