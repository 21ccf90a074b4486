"""Push providers behind one interface (``Provider``), one module per provider."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import orjson

from fanout.config import Settings
from fanout.providers.base import DELIVERED, Outcome, OutcomeKind, Provider
from fanout.providers.quota import QuotaStore

log = logging.getLogger(__name__)


def build_providers(settings: Settings, quotas: QuotaStore | None = None) -> dict[str, Provider]:
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
            log.warning("%s is not configured: its devices will be counted as skipped", platform)
        else:
            if quotas is not None:
                _share_quota(provider, settings, quotas)
            providers[platform] = provider
    return providers


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
    key = settings.apns_key.get_secret_value() if settings.apns_key else None
    if key is None and settings.apns_key_file:
        key = Path(settings.apns_key_file).read_text()
    if not (key and settings.apns_key_id and settings.apns_team_id and settings.apns_topic):
        return None
    from fanout.providers.apns import ApnsProvider

    return ApnsProvider(
        key_pem=key,
        key_id=settings.apns_key_id,
        team_id=settings.apns_team_id,
        topic=settings.apns_topic,
        endpoint=settings.apns_endpoint,
        **_shared(settings, "apns"),
    )


def _fcm(settings: Settings) -> Provider | None:
    text = settings.fcm_credentials.get_secret_value() if settings.fcm_credentials else None
    if text is None and settings.fcm_credentials_file:
        text = Path(settings.fcm_credentials_file).read_text()
    if not text:
        return None
    from fanout.providers.fcm import FcmProvider

    return FcmProvider(
        service_account_info=orjson.loads(text),
        endpoint=settings.fcm_endpoint,
        ca_file=settings.tls_ca_file,
        **_shared(settings, "fcm"),
    )


def _webpush(settings: Settings) -> Provider | None:
    if settings.vapid_private_key is None or not settings.vapid_subject:
        return None
    from fanout.providers.webpush import WebPushProvider

    return WebPushProvider(
        vapid_private_key=settings.vapid_private_key.get_secret_value(),
        subject=settings.vapid_subject,
        **_shared(settings, "webpush"),
    )


__all__ = ["DELIVERED", "Outcome", "OutcomeKind", "Provider", "build_providers"]
