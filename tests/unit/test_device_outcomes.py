"""What the delivery records per device: a row only for a device it did not send to."""

from __future__ import annotations

from fanout.providers import Outcome, OutcomeKind
from fanout.queue.messages import Device
from fanout.stages.device_outcomes import NO_PROVIDER, batch_detail

DEVICES = [
    Device(i, platform, f"t{i}")
    for i, platform in enumerate(["apns", "apns", "fcm", "fcm", "webpush"], 1)
]
OUTCOMES = [
    Outcome(OutcomeKind.OK),
    Outcome(OutcomeKind.INVALID_TOKEN, reason="apns: BadDeviceToken"),
    Outcome(OutcomeKind.RETRY, reason="fcm: 429"),
    Outcome(OutcomeKind.PERMANENT, reason="fcm config: 401"),
    None,
]


def test_rows_only_for_devices_not_sent_to_and_counts_per_platform() -> None:
    detail = batch_detail(DEVICES, OUTCOMES, retrying=True)
    assert detail.by_platform == {
        "apns": {"sent": 1, "invalid": 1},
        "fcm": {"retried": 1, "failed": 1},
        "webpush": {"skipped": 1},
    }
    assert list(zip(detail.device_ids, detail.kinds, detail.reasons, strict=True)) == [
        (2, "invalid", "apns: BadDeviceToken"),
        (3, "retried", "fcm: 429"),
        (4, "failed", "fcm config: 401"),
        (5, "skipped", NO_PROVIDER),
    ]
    assert detail.platforms == ["apns", "fcm", "fcm", "webpush"]


def test_a_retry_without_attempts_left_is_a_failure_with_the_last_answer() -> None:
    detail = batch_detail(DEVICES[2:3], OUTCOMES[2:3], retrying=False)
    assert (detail.kinds, detail.reasons) == (["failed"], ["retries exhausted; last: fcm: 429"])
