"""Push providers behind one interface (``Provider``), one module per provider."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from fanout.config import ConfigError, Settings
from fanout.providers.base import DELIVERED, Outcome, OutcomeKind, Provider
from fanout.providers.quota import QuotaStore

log = logging.getLogger(__name__)


def build_providers(
    settings: Settings, quotas: QuotaStore | None = None, *, warn: bool = True
) -> dict[str, Provider]:
    """Providers by platform, as configured; an unconfigured one is skipped with a warning
    (its devices are counted as skipped, not lost). The sink stands in for all three.
    With ``quotas``, each provider whose quota is set (``FANOUT_*_QUOTA_PER_MINUTE``)
    shares its credential's budget with every other worker through it."""
    if settings.provider == "sink":
        from fanout.providers.sink import SinkProvider

        sink = SinkProvider(settings.sink_url)
        return {platform: sink for platform in sink.platforms}
    providers: dict[str, Provider] = {}
    for platform, build in (("apns", _apns), ("fcm", _fcm), ("webpush", _webpush)):
        provider = build(settings)
        if provider is None:
            if warn:
                log.warning(
                    "%s is not configured: its devices will be counted as skipped", platform
                )
        else:
            if quotas is not None:
                _share_quota(provider, settings, quotas)
            providers[platform] = provider
    return providers


def check_credentials(settings: Settings) -> None:
    """Build every configured provider once and close it: a credential fanout cannot use
    is a ConfigError naming its setting at start-up, not a traceback at the first push.
    (Building connects to nothing.)"""

    async def build_and_close() -> None:
        for provider in {id(p): p for p in build_providers(settings, warn=False).values()}.values():
            await provider.aclose()

    asyncio.run(build_and_close())


def _share_quota(provider: Provider, settings: Settings, quotas: QuotaStore) -> None:
    """Give the provider its credential's shared budget, if it has a quota."""
    from fanout.providers.http2 import Http2Provider
    from fanout.providers.quota import Budget, SharedQuota

    if not isinstance(provider, Http2Provider):
        return
    per_minute = {
        "apns": settings.apns_quota_per_minute,
        "fcm": settings.fcm_quota_per_minute,
        "webpush": settings.webpush_quota_per_minute,
    }.get(provider.name, 0)
    if per_minute:
        provider.limit.quota = SharedQuota(
            quotas, quota_credential(provider), Budget.per_minute(per_minute),
            provider=provider.name,
        )  # fmt: skip


def quota_credential(provider: Provider) -> str:
    """What a push service meters: the FCM project, the APNs team and topic, the VAPID key
    (its public half, hashed: short, and no key material in the shared state)."""
    if project := getattr(provider, "project_id", None):
        return f"fcm:{project}"
    if team := getattr(provider, "team_id", None):
        return f"apns:{team}:{getattr(provider, 'topic', '')}"
    if public_key := getattr(provider, "public_key", None):
        return f"webpush:{hashlib.sha256(str(public_key).encode()).hexdigest()[:16]}"
    return str(getattr(provider, "name", "provider"))


def _shared(settings: Settings, name: str) -> dict[str, Any]:
    """Each provider gets its own transport and limit, shared by a worker's coroutines."""
    from fanout.providers.breaker import Breakers
    from fanout.providers.transport import AdaptiveLimit, push_transport

    return {
        "client": push_transport(settings, name),
        "limit": AdaptiveLimit(settings.provider_rate_limit, settings.provider_concurrency),
        "breakers": Breakers(name, cooldown=settings.breaker_cooldown_seconds),
    }


def _apns(settings: Settings) -> Provider | None:
    key = _secret(settings.apns_key, settings.apns_key_file, "FANOUT_APNS_KEY")
    parts = {
        "FANOUT_APNS_KEY (or _FILE)": key,
        "FANOUT_APNS_KEY_ID": settings.apns_key_id,
        "FANOUT_APNS_TEAM_ID": settings.apns_team_id,
        "FANOUT_APNS_TOPIC": settings.apns_topic,
    }
    if not any(parts.values()):
        return None
    if missing := [name for name, value in parts.items() if not value]:
        raise ConfigError(f"APNs is configured in part: set {', '.join(missing)} too")
    assert key is not None and settings.apns_key_id and settings.apns_team_id
    assert settings.apns_topic
    _check_private_key(key, "FANOUT_APNS_KEY (or _FILE)", "the .p8 key file Apple gives")
    from fanout.providers.apns import ApnsProvider

    return ApnsProvider(
        key_pem=key,
        key_id=settings.apns_key_id,
        team_id=settings.apns_team_id,
        topic=settings.apns_topic,
        endpoint=settings.apns_endpoint,
        **_shared(settings, "apns"),
    )


def _secret(value: SecretStr | None, file: str | None, setting: str) -> str | None:
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


def _check_private_key(pem: str, setting: str, what: str) -> None:
    """Found at start-up, not at the first push of every batch."""
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{setting} is not a PEM private key ({what})") from None


def _fcm(settings: Settings) -> Provider | None:
    text = _secret(
        settings.fcm_credentials, settings.fcm_credentials_file, "FANOUT_FCM_CREDENTIALS"
    )
    if not text:
        return None
    try:
        info = orjson.loads(text)
        if not isinstance(info, dict) or not {"client_email", "private_key"} <= info.keys():
            raise ValueError
    except ValueError:
        raise ConfigError(
            "FANOUT_FCM_CREDENTIALS (or _FILE) is not a service account's JSON key "
            "(with client_email and private_key)"
        ) from None
    from fanout.providers.fcm import FcmProvider

    return FcmProvider(
        service_account_info=info,
        endpoint=settings.fcm_endpoint,
        ca_file=settings.tls_ca_file,
        **_shared(settings, "fcm"),
    )


def _webpush(settings: Settings) -> Provider | None:
    if settings.vapid_private_key is None or not settings.vapid_subject:
        return None
    from fanout.providers.webpush import WebPushProvider, load_vapid_key

    try:
        load_vapid_key(settings.vapid_private_key.get_secret_value())
    except ValueError:
        raise ConfigError(
            "FANOUT_VAPID_PRIVATE_KEY is not a P-256 private key (PEM, or the 32-byte key "
            "in base64url that web-push tools print)"
        ) from None
    return WebPushProvider(
        vapid_private_key=settings.vapid_private_key.get_secret_value(),
        subject=settings.vapid_subject,
        **_shared(settings, "webpush"),
    )


__all__ = [
    "DELIVERED",
    "Outcome",
    "OutcomeKind",
    "Provider",
    "build_providers",
    "check_credentials",
]
