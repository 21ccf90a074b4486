"""Metric labels stay a bounded set: a reason's first words, never a message or a host."""

from __future__ import annotations

from typing import Any

import pytest

from fanout.metrics import reason_label


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        (None, ""),
        ("apns: BadDeviceToken", "BadDeviceToken"),
        ("apns config: 403 InvalidProviderToken", "403 InvalidProviderToken"),
        ("fcm: 400 INVALID_ARGUMENT: The registration token is not valid", "400 INVALID_ARGUMENT"),
        ("webpush: 429", "429"),
        ("sink: try later", "try later"),
        ("retries exhausted after a very long sequence of words", "retries exhausted after"),
    ],
)
def test_reason_labels(reason: str | None, label: str) -> None:
    assert reason_label(reason) == label


def outcomes(provider: str, app: str, kind: str, reason: str = "") -> float:
    from fanout.metrics import PROVIDER_OUTCOMES

    value: float = PROVIDER_OUTCOMES.labels(provider, app, kind, reason)._value.get()
    return value


def test_each_apps_outcomes_are_counted_under_its_own_app_label() -> None:
    from fanout.metrics import count_outcome
    from fanout.providers.base import DELIVERED, Outcome, OutcomeKind

    before = {app: outcomes("apns", app, "ok") for app in ("books-ios", "news-ios")}
    refused = outcomes("apns", "news-ios", "invalid_token", "BadDeviceToken")
    for _ in range(3):
        count_outcome("apns", DELIVERED, "books-ios")
    count_outcome("apns", DELIVERED, "news-ios")
    count_outcome(
        "apns", Outcome(OutcomeKind.INVALID_TOKEN, reason="apns: BadDeviceToken"), "news-ios"
    )
    assert outcomes("apns", "books-ios", "ok") - before["books-ios"] == 3
    assert outcomes("apns", "news-ios", "ok") - before["news-ios"] == 1
    assert outcomes("apns", "news-ios", "invalid_token", "BadDeviceToken") - refused == 1


@pytest.mark.parametrize(("app_label", "label"), [(True, "books-ios"), (False, "")])
def test_the_app_label_is_the_apps_key_unless_the_setting_drops_it(
    app_label: bool, label: str
) -> None:
    """FANOUT_METRICS_APP_LABEL=false: every app's outcomes in one series per provider,
    outcome and reason, for deployments with thousands of apps."""
    from fanout.config import Settings
    from fanout.providers import providers_of_credential
    from fanout.providers.http2 import Http2Provider
    from fanout.providers.quota import MemoryQuotaStore

    settings = Settings(metrics_app_label=app_label, apns_quota_per_minute=60_000)
    built = providers_of_credential(
        settings, _apns_credential(), MemoryQuotaStore(), app="books-ios"
    )
    assert {getattr(p, "app_label", None) for p in built.values()} == {label}
    # The quota's wait histogram too: the credential's waits under its app's label.
    quotas = {p.limit.quota for p in built.values() if isinstance(p, Http2Provider)}
    assert None not in quotas and {q.app_label for q in quotas} == {label}


def _apns_credential() -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fanout.credentials.validation import apns_credential

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return apns_credential(
        key_pem=pem, key_id="ABC123DEFG", team_id="TEAM123456", bundle_id="com.example.books"
    )


def _sample(metric: Any, name: str, **labels: str) -> float:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_accept_latency_config_errors_and_quota_waits_carry_the_app_label() -> None:
    """Each app's latency, refused credentials and quota waits apart: an app whose key
    Apple refuses is named by the metric, not only by the log."""
    import asyncio

    from fanout.metrics import (
        PROVIDER_ACCEPT_LATENCY,
        PROVIDER_CONFIG_ERRORS,
        PROVIDER_QUOTA_WAIT_SECONDS,
        count_outcome,
        published_at,
    )
    from fanout.providers.base import DELIVERED, config_error
    from fanout.providers.quota import Budget, MemoryQuotaStore, SharedQuota

    latency = "fanout_provider_accept_latency_seconds_count"
    before = {
        app: _sample(PROVIDER_ACCEPT_LATENCY, latency, provider="apns", app=app)
        for app in ("books-ios", "news-ios")
    }
    token = published_at.set(0.0)
    try:
        count_outcome("apns", DELIVERED, "books-ios")
        count_outcome("apns", DELIVERED, "books-ios")
    finally:
        published_at.reset(token)
    after = _sample(PROVIDER_ACCEPT_LATENCY, latency, provider="apns", app="books-ios")
    assert after - before["books-ios"] == 2
    news = _sample(PROVIDER_ACCEPT_LATENCY, latency, provider="apns", app="news-ios")
    assert news == before["news-ios"]

    errors = "fanout_provider_config_errors_total"
    refused = _sample(PROVIDER_CONFIG_ERRORS, errors, provider="apns", app="news-ios")
    outcome = config_error("apns", "403 InvalidProviderToken", "news-ios")
    assert outcome.config
    assert _sample(PROVIDER_CONFIG_ERRORS, errors, provider="apns", app="news-ios") == refused + 1

    waits = "fanout_provider_quota_wait_seconds_count"
    quota = SharedQuota(
        MemoryQuotaStore(), "apns:T:books", Budget.per_minute(60_000), provider="apns"
    )
    quota.app_label = "books-ios"
    waited = _sample(PROVIDER_QUOTA_WAIT_SECONDS, waits, provider="apns", app="books-ios")
    asyncio.run(quota.take())  # the first push leases the worker's first slice: it waits
    now = _sample(PROVIDER_QUOTA_WAIT_SECONDS, waits, provider="apns", app="books-ios")
    assert now == waited + 1


def test_the_setting_that_drops_the_app_label_empties_it_for_every_series() -> None:
    from fanout.metrics import app_label, use_app_label

    try:
        assert app_label("books-ios") == "books-ios" and app_label(None) == ""
        use_app_label(False)  # FANOUT_METRICS_APP_LABEL=false: thousands of apps
        assert app_label("books-ios") == ""
    finally:
        use_app_label(True)
