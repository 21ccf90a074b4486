"""All three push services on loopback, with fresh credentials, and the settings to use them."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from fanout.credentials.validation import (
    Credential,
    apns_credential,
    fcm_credential,
    webpush_credential,
)
from fanout.local.emulators.apns import ApnsEmulator
from fanout.local.emulators.fcm import FcmEmulator
from fanout.local.emulators.serve import serve_tls
from fanout.local.emulators.tls import TestCertificates, make_test_ca
from fanout.local.emulators.webpush import WebPushEmulator
from fanout.providers.webpush import b64url


def _pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


@dataclass
class LocalPushServices:
    apns: ApnsEmulator
    fcm: FcmEmulator
    webpush: WebPushEmulator
    certificates: TestCertificates
    # Apple's sandbox endpoint (debug builds' tokens), the same keys as ``apns``.
    apns_sandbox: ApnsEmulator | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # Settings fields to point at them
    webpush_endpoint_base: str = ""  # subscriptions are <base><id>
    p256dh: str = ""  # the demo subscriptions' public key and auth secret (base64url)
    auth: str = ""
    apns_key_pem: str = ""
    fcm_service_account: dict[str, Any] = field(default_factory=dict)

    def add_app(self, name: str) -> EmulatedApp:
        """Credentials of a new app the three services know, each its own: an APNs key of
        its own team for its own bundle id, a Firebase project's service account, a VAPID
        key whose subscriptions are ``<base><name>-…``."""
        apns_key = ec.generate_private_key(ec.SECP256R1())
        key_id, team_id = secrets.token_hex(5).upper(), secrets.token_hex(5).upper()
        bundle_id = f"com.example.{name}"
        self.apns.public_keys[key_id] = apns_key.public_key()  # shared with the sandbox
        self.apns.key_apps[key_id] = (team_id, bundle_id)
        fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        project = f"fanout-{name}"
        client_email = f"push@{project}.iam.gserviceaccount.com"
        self.fcm.projects[project] = (client_email, fcm_key.public_key())
        service_account = {
            **self.fcm_service_account,
            "project_id": project,
            "private_key_id": secrets.token_hex(8),
            "private_key": _pem(fcm_key),
            "client_email": client_email,
        }
        vapid_key = ec.generate_private_key(ec.SECP256R1())
        vapid_scalar = b64url(vapid_key.private_numbers().private_value.to_bytes(32, "big"))
        public_vapid = b64url(
            vapid_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        self.webpush.subscription_keys[f"{name}-"] = public_vapid
        return EmulatedApp(
            name=name,
            services=self,
            apns_key_id=key_id,
            bundle_id=bundle_id,
            fcm_project=project,
            vapid_public_key=public_vapid,
            credentials=[
                apns_credential(
                    key_pem=_pem(apns_key), key_id=key_id, team_id=team_id, bundle_id=bundle_id
                ),
                fcm_credential(service_account_json=orjson.dumps(service_account).decode()),
                webpush_credential(
                    vapid_private_key=vapid_scalar, subject="mailto:push@example.com"
                ),
            ],
        )

    def delivered(self) -> tuple[int, int]:
        """(unique devices, duplicate pushes) over the three services."""
        ledgers = [self.apns.ledger, self.fcm.ledger, self.webpush.ledger]
        if self.apns_sandbox is not None:
            ledgers.append(self.apns_sandbox.ledger)
        return sum(x.unique for x in ledgers), sum(x.duplicates for x in ledgers)


@dataclass
class EmulatedApp:
    """An app's credentials as the emulators know them, and device tokens issued to it."""

    name: str
    services: LocalPushServices
    apns_key_id: str
    bundle_id: str
    fcm_project: str
    vapid_public_key: str
    credentials: list[Credential]  # checked, ready for ``store_credential``
    _issued: int = 0

    def signer(self, platform: str) -> str:
        """The credential the emulator records for this app's pushes on ``platform``."""
        return {
            "apns": self.apns_key_id,
            "fcm": self.fcm_project,
            "webpush": self.vapid_public_key,
        }[platform]

    def device_token(self, platform: str) -> str:
        """A new token of this app (Web Push: the subscription's endpoint), known to the
        service as this app's: a push for it signed by another app's credential is refused."""
        self._issued += 1
        token = {
            "apns": secrets.token_hex(32),
            "fcm": f"{self.name}-{self._issued}:APA91b{secrets.token_urlsafe(60)}",
            "webpush": f"{self.webpush_endpoint_base}{self._issued}",
        }[platform]
        self.claim(platform, token)
        return token

    @property
    def webpush_endpoint_base(self) -> str:
        """Subscriptions made with this app's VAPID key are ``<this><id>``."""
        return f"{self.services.webpush_endpoint_base}{self.name}-"

    def claim(self, platform: str, token: str) -> None:
        """Make the service know ``token`` (made elsewhere, e.g. seeded) as this app's.
        (A Web Push subscription is the app's by its endpoint: ``webpush_endpoint_base``.)"""
        if platform == "apns":
            self.services.apns.token_topics[token.lower()] = self.bundle_id
        elif platform == "fcm":
            self.services.fcm.token_projects[token] = self.fcm_project

    @staticmethod
    def wire_token(platform: str, token: str) -> str:
        """The token as the service's ledger counts it (Web Push: the subscription id)."""
        return token.rpartition("/wp/")[2] if platform == "webpush" else token


@contextlib.asynccontextmanager
async def local_push_services(
    directory: Path | None = None, *, server: str = "hypercorn"
) -> AsyncIterator[LocalPushServices]:
    """``server``: "hypercorn" (tests) or "granian" (for load; see emulators.serve)."""
    with contextlib.ExitStack() as files:
        if directory is None:
            directory = Path(files.enter_context(tempfile.TemporaryDirectory(prefix="fanout-tls-")))
        certificates = make_test_ca(directory)

        apns_key = ec.generate_private_key(ec.SECP256R1())
        key_id, team_id, topic = secrets.token_hex(5).upper(), "TEAM123456", "com.example.books"
        fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subscriber_key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        vapid_key = ec.generate_private_key(ec.SECP256R1())

        public_keys: dict[str, Any] = {key_id: apns_key.public_key()}
        token_environments: dict[str, str] = {}  # token -> "sandbox" | "production"
        apns = ApnsEmulator(
            public_keys=public_keys,
            team_id=team_id,
            topic=topic,
            token_environments=token_environments,
        )
        apns_sandbox = ApnsEmulator(
            public_keys=public_keys,
            team_id=team_id,
            topic=topic,
            environment="sandbox",
            token_environments=token_environments,
        )
        # One Apple: both endpoints know the same keys, apps and tokens.
        apns_sandbox.key_apps = apns.key_apps
        apns_sandbox.token_topics = apns.token_topics
        apns_sandbox.revoked_keys = apns.revoked_keys
        fcm = FcmEmulator(
            project_id="fanout-demo",
            client_email="fanout@fanout-demo.iam.gserviceaccount.com",
            public_key=fcm_key.public_key(),
        )
        webpush = WebPushEmulator(private_key=subscriber_key, auth=auth)
        async with contextlib.AsyncExitStack() as servers:
            apns_url = await servers.enter_async_context(
                serve_tls(apns, certificates, server=server)
            )
            apns_sandbox_url = await servers.enter_async_context(
                serve_tls(apns_sandbox, certificates, server=server)
            )
            fcm.base_url = await servers.enter_async_context(
                serve_tls(fcm, certificates, server=server)
            )
            webpush.base_url = await servers.enter_async_context(
                serve_tls(webpush, certificates, server=server)
            )
            service_account = {
                "type": "service_account",
                "project_id": fcm.project_id,
                "private_key_id": secrets.token_hex(8),
                "private_key": _pem(fcm_key),
                "client_email": fcm.client_email,
                "client_id": "1",
                "token_uri": f"{fcm.base_url}/token",
            }
            vapid_scalar = vapid_key.private_numbers().private_value.to_bytes(32, "big")
            services = LocalPushServices(
                apns=apns,
                fcm=fcm,
                webpush=webpush,
                certificates=certificates,
                apns_sandbox=apns_sandbox,
                webpush_endpoint_base=f"{webpush.base_url}/wp/",
                p256dh=b64url(
                    subscriber_key.public_key().public_bytes(
                        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                    )
                ),
                auth=b64url(auth),
                apns_key_pem=_pem(apns_key),
                fcm_service_account=service_account,
            )
            services.settings = {
                "provider": "push",
                "apns_key": SecretStr(services.apns_key_pem),
                "apns_key_id": key_id,
                "apns_team_id": team_id,
                "apns_topic": topic,
                "apns_endpoint": apns_url,
                "apns_sandbox_endpoint": apns_sandbox_url,
                "fcm_credentials": SecretStr(orjson.dumps(service_account).decode()),
                "fcm_endpoint": fcm.base_url,
                "vapid_private_key": SecretStr(b64url(vapid_scalar)),
                "vapid_subject": "mailto:push@example.com",
                "tls_ca_file": certificates.ca_file,
            }
            yield services
