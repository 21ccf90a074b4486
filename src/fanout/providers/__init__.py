"""Push providers behind one interface (``Provider``), one module per provider."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson

from fanout.config import Settings
from fanout.providers.base import DELIVERED, Outcome, OutcomeKind, Provider

log = logging.getLogger(__name__)


def build_providers(settings: Settings) -> dict[str, Provider]:
    """Providers by platform, as configured; an unconfigured one is skipped with a warning
    (its devices are counted as skipped, not lost). The sink stands in for all three."""
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
            providers[platform] = provider
    return providers


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
