"""Metric labels stay a bounded set: a reason's first words, never a message or a host."""

from __future__ import annotations

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
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fanout.config import Settings
    from fanout.credentials.validation import apns_credential
    from fanout.providers import providers_of_credential

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    credential = apns_credential(
        key_pem=pem, key_id="ABC123DEFG", team_id="TEAM123456", bundle_id="com.example.books"
    )
    settings = Settings(metrics_app_label=app_label)
    built = providers_of_credential(settings, credential, app="books-ios")
    assert {getattr(p, "app_label", None) for p in built.values()} == {label}
