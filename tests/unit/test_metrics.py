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
