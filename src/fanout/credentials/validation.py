"""Push credentials checked when they are given: what parses and what Apple, Google and the
browsers' push services will take, refused with the field named and never echoed.

One place for this parsing: the checks of the ``FANOUT_APNS_*``, ``_FCM_*`` and
``_VAPID_*`` settings at start-up (``providers.check_credentials``) and of the
credentials stored per app (``fanout apps credentials set``) both call it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pydantic import SecretStr

from fanout.config import ConfigError, Settings
from fanout.errors import FanoutError

# Apple shows both as 10 characters of A-Z and 0-9 (Certificates, Identifiers & Profiles >
# Keys, and Membership); a JWT whose kid or iss differs in case is refused.
APPLE_ID_PATTERN = r"^[A-Z0-9]{10}$"
# Apple's rule for a bundle id: A-Z, a-z, 0-9, hyphen and period, at most 155 characters;
# reverse-DNS, so at least two parts.
BUNDLE_ID_PATTERN = r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"
BUNDLE_ID_MAX = 155
# Google Cloud project ids: 6-30 of a-z, 0-9 and hyphen, starting with a letter (older ones
# may carry a domain, `example.com:books`). It is written into FCM's URL path.
PROJECT_ID_PATTERN = r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$"
VAPID_SUBJECT_PATTERN = r"^(mailto:\S+@\S+|https://\S+)$"


class InvalidCredential(FanoutError, ValueError):
    """A credential refused. ``field`` names the input at fault (``key``, ``key_id``,
    ``service_account``, ``vapid_private_key``, …), ``problem`` says what is wrong with it;
    neither holds the value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Credential:
    """A checked credential: its private part, which is only ever stored sealed, and what
    identifies it, which is safe to show (key id, team, project, public key, fingerprint)."""

    provider: str
    secret: bytes = field(repr=False)
    identity: dict[str, str]


def fingerprint(public_key: PublicKeyTypes) -> str:
    """SHA-256 of the public key (its DER SubjectPublicKeyInfo), 16 hex digits: enough to
    tell two keys apart on a page, and nothing of the private key."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _pkcs8_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _p256(key: object) -> ec.EllipticCurvePrivateKey | None:
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


# --- APNs ---------------------------------------------------------------------------------


def load_apns_key(pem: str) -> ec.EllipticCurvePrivateKey:
    """The .p8 key Apple gives: an EC P-256 private key in PEM (ES256 signs with it)."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if (p256 := _p256(key)) is None:
        raise InvalidCredential(
            "key", "is not a PEM private key of the kind Apple gives (.p8: EC P-256)"
        )
    return p256


def apns_credential(*, key_pem: str, key_id: str, team_id: str, bundle_id: str) -> Credential:
    """An APNs token-auth credential, checked field by field."""
    key = load_apns_key(key_pem)
    if not re.match(APPLE_ID_PATTERN, key_id):
        raise InvalidCredential("key_id", "must be the 10-character key id (A-Z, 0-9)")
    if not re.match(APPLE_ID_PATTERN, team_id):
        raise InvalidCredential("team_id", "must be the 10-character team id (A-Z, 0-9)")
    if len(bundle_id) > BUNDLE_ID_MAX or not re.match(BUNDLE_ID_PATTERN, bundle_id):
        raise InvalidCredential(
            "bundle_id", "must be the app's bundle id, e.g. com.example.books (A-Z, 0-9, -, .)"
        )
    identity = {
        "key_id": key_id,
        "team_id": team_id,
        "bundle_id": bundle_id,
        "fingerprint": fingerprint(key.public_key()),
    }
    return Credential("apns", _pkcs8_pem(key), identity)


# --- FCM ----------------------------------------------------------------------------------


def load_service_account(text: str) -> dict[str, Any]:
    """A service account's JSON key with what google-auth needs to sign the OAuth assertion
    and where to send it (``client_email``, ``private_key``, ``token_uri``) and what FCM's
    URL needs (``project_id``). Refused as ``service_account``, the problem naming the
    JSON field."""

    def refuse(problem: str) -> InvalidCredential:
        return InvalidCredential("service_account", problem)

    try:
        info = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise refuse("is not JSON (a service account's key file from Google)") from None
    if not isinstance(info, dict):
        raise refuse("is not a JSON object (a service account's key file from Google)")
    if info.get("type") != "service_account":
        raise refuse('has no "type": "service_account" (not a service account\'s key file)')
    for name in ("project_id", "client_email", "private_key", "token_uri"):
        if not isinstance(info.get(name), str) or not info[name]:
            raise refuse(f'has no "{name}"')
    if not re.match(PROJECT_ID_PATTERN, info["project_id"]):
        raise refuse('has a "project_id" that is not a Google Cloud project id')
    if "@" not in info["client_email"]:
        raise refuse('has a "client_email" that is not an email address')
    if not info["token_uri"].startswith("https://"):
        raise refuse('has a "token_uri" that is not an https:// URL')
    try:
        key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise refuse('has a "private_key" that is not an RSA private key in PEM')
    return info


def fcm_credential(*, service_account_json: str) -> Credential:
    """An FCM HTTP v1 credential: a service account of the Firebase project."""
    info = load_service_account(service_account_json)
    key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    identity = {
        "project_id": info["project_id"],
        "client_email": info["client_email"],
        "private_key_id": str(info.get("private_key_id", "")),
        "fingerprint": fingerprint(key.public_key()),
    }
    return Credential("fcm", orjson.dumps(info), identity)


# --- Web Push -----------------------------------------------------------------------------


def load_vapid_private_key(value: str) -> ec.EllipticCurvePrivateKey:
    """A VAPID key: P-256, as PEM or the raw 32-byte scalar in base64url (what web-push
    tools print). The parsing is the Web Push provider's own."""
    from fanout.providers.webpush import load_vapid_key

    try:
        key = _p256(load_vapid_key(value.strip()))
    except (ValueError, TypeError):
        key = None
    if key is None:
        raise InvalidCredential(
            "vapid_private_key",
            "is not a P-256 private key (PEM, or the 32-byte key in base64url that "
            "web-push tools print)",
        )
    return key


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as a browser's ``pushManager.subscribe({applicationServerKey})``
    takes it: the uncompressed point (65 bytes, 0x04 | x | y) in base64url, unpadded."""
    from fanout.providers.webpush import b64url

    return b64url(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def webpush_credential(*, vapid_private_key: str, subject: str) -> Credential:
    """A Web Push (VAPID, RFC 8292) credential: the key pair and the contact push services
    may use."""
    key = load_vapid_private_key(vapid_private_key)
    if not re.match(VAPID_SUBJECT_PATTERN, subject):
        raise InvalidCredential(
            "subject", "must be a mailto: address or an https:// URL (RFC 8292's contact)"
        )
    identity = {
        "public_key": application_server_key(key),
        "subject": subject,
        "fingerprint": fingerprint(key.public_key()),
    }
    return Credential("webpush", _pkcs8_pem(key), identity)


def generate_vapid_key() -> str:
    """A new VAPID private key, PEM (PKCS#8)."""
    return _pkcs8_pem(ec.generate_private_key(ec.SECP256R1())).decode()


# --- The FANOUT_APNS_*, _FCM_* and _VAPID_* settings ----------------------------------------

# Each field as the settings name it, for a message naming the variable.
SETTINGS_FIELDS = {
    "apns": {
        "key": "FANOUT_APNS_KEY (or _FILE)",
        "key_id": "FANOUT_APNS_KEY_ID",
        "team_id": "FANOUT_APNS_TEAM_ID",
        "bundle_id": "FANOUT_APNS_TOPIC",
    },
    "fcm": {"service_account": "FANOUT_FCM_CREDENTIALS (or _FILE)"},
    "webpush": {
        "vapid_private_key": "FANOUT_VAPID_PRIVATE_KEY",
        "subject": "FANOUT_VAPID_SUBJECT",
    },
}


def read_secret(value: SecretStr | None, file: str | None, setting: str) -> str | None:
    """A secret given in the environment, or read from the file ``setting``_FILE names;
    a file that cannot be read is a config error naming it (its path is no secret)."""
    if value is not None:
        return value.get_secret_value()
    if not file:
        return None
    try:
        return Path(file).read_text()
    except OSError as exc:
        raise ConfigError(f"{setting}_FILE: cannot read {file}: {exc.strerror}") from None


def settings_credentials(settings: Settings) -> dict[str, Credential]:
    """The credentials the settings hold, by provider, checked as stored ones are; a
    provider with none of its settings is absent. ``ConfigError`` names the variable."""
    apns = {
        "key_pem": read_secret(settings.apns_key, settings.apns_key_file, "FANOUT_APNS_KEY"),
        "key_id": settings.apns_key_id,
        "team_id": settings.apns_team_id,
        "bundle_id": settings.apns_topic,
    }
    fcm = read_secret(
        settings.fcm_credentials, settings.fcm_credentials_file, "FANOUT_FCM_CREDENTIALS"
    )
    vapid = settings.vapid_private_key
    found: dict[str, Credential] = {}
    try:
        if any(apns.values()):
            names = dict(zip(apns, SETTINGS_FIELDS["apns"].values(), strict=True))
            if missing := [names[name] for name, value in apns.items() if not value]:
                raise ConfigError(f"APNs is configured in part: set {', '.join(missing)} too")
            found["apns"] = apns_credential(**{k: str(v) for k, v in apns.items()})
        if fcm:
            found["fcm"] = fcm_credential(service_account_json=fcm)
        if vapid is not None or settings.vapid_subject:
            if vapid is None or not settings.vapid_subject:
                unset = "FANOUT_VAPID_PRIVATE_KEY" if vapid is None else "FANOUT_VAPID_SUBJECT"
                raise ConfigError(f"Web Push is configured in part: set {unset} too")
            found["webpush"] = webpush_credential(
                vapid_private_key=vapid.get_secret_value(), subject=settings.vapid_subject
            )
    except InvalidCredential as exc:
        provider = next(p for p, fields in SETTINGS_FIELDS.items() if exc.field in fields)
        raise ConfigError(f"{SETTINGS_FIELDS[provider][exc.field]} {exc.problem}") from None
    return found
