"""Push providers behind one interface (``Provider``), one module per provider."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from fanout.config import Settings
from fanout.providers.base import DELIVERED, Outcome, OutcomeKind, Provider
from fanout.providers.quota import QuotaStore
from fanout.queue.messages import APNS_SANDBOX
from fanout.store.apps import DEFAULT_APP

if TYPE_CHECKING:
    from fanout.credentials.validation import Credential

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
    from fanout.credentials.validation import settings_credentials

    providers: dict[str, Provider] = {}
    credentials = settings_credentials(settings)  # checked: a ConfigError names the setting
    for platform in ("apns", "fcm", "webpush"):
        if (credential := credentials.get(platform)) is None:
            if warn:
                log.warning(
                    "%s is not configured: its devices will be counted as skipped", platform
                )
        else:
            providers |= providers_of_credential(settings, credential, quotas, app=DEFAULT_APP)
    return providers


def providers_of_credential(
    settings: Settings, credential: Credential, quotas: QuotaStore | None = None, *, app: str
) -> dict[str, Provider]:
    """The providers of one checked credential of the app ``app`` (its key), by wire
    platform (an APNs key serves both of Apple's environments: production, and the
    sandbox debug builds' tokens work on), each quota shared through ``quotas``."""
    if credential.provider == "apns":
        built = {
            "apns": _apns(settings, credential, settings.apns_endpoint),
            APNS_SANDBOX: _apns(settings, credential, settings.apns_sandbox_endpoint),
        }
    else:
        build = {"fcm": _fcm, "webpush": _webpush}[credential.provider]
        built = {credential.provider: build(settings, credential)}
    from fanout.providers.http2 import Http2Provider

    for provider in built.values():
        if quotas is not None:
            _share_quota(provider, settings, quotas)
        if settings.metrics_app_label and isinstance(provider, Http2Provider):
            provider.app_label = app
            if provider.limit.quota is not None:
                provider.limit.quota.app_label = app
    return built


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
        "open_tokens": settings.open_tokens(),  # None: opens off, no fo_open
    }


def _apns(settings: Settings, credential: Credential, endpoint: str) -> Provider:
    from fanout.providers.apns import ApnsProvider

    return ApnsProvider(
        key_pem=credential.secret.decode(),
        key_id=credential.identity["key_id"],
        team_id=credential.identity["team_id"],
        topic=credential.identity["bundle_id"],
        endpoint=endpoint,
        **_shared(settings, "apns"),
    )


def _fcm(settings: Settings, credential: Credential) -> Provider:
    from fanout.providers.fcm import FcmProvider

    return FcmProvider(
        service_account_info=orjson.loads(credential.secret),
        endpoint=settings.fcm_endpoint,
        ca_file=settings.tls_ca_file,
        **_shared(settings, "fcm"),
    )


def _webpush(settings: Settings, credential: Credential) -> Provider:
    from fanout.providers.webpush import WebPushProvider

    return WebPushProvider(
        vapid_private_key=credential.secret.decode(),
        subject=credential.identity["subject"],
        **_shared(settings, "webpush"),
    )


__all__ = [
    "DELIVERED",
    "Outcome",
    "OutcomeKind",
    "Provider",
    "build_providers",
    "check_credentials",
    "providers_of_credential",
]
