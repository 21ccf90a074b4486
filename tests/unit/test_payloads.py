"""A batch's webhooks about its devices: one call per kind per batch, never one per device."""

from __future__ import annotations

from fanout.providers import Outcome, OutcomeKind
from fanout.queue.messages import Device
from fanout.stages.device_outcomes import batch_detail
from fanout.webhooks.payloads import device_reports, given_up_report

DEVICES = [
    Device(1, "apns", "aa"),
    Device(2, "fcm", "bb"),
    Device(3, "apns", "cc"),
    Device(4, "webpush", "https://push.example/x", None, "k", "a"),
]


def test_retired_and_failed_devices_are_one_report_each_with_the_providers_reason() -> None:
    outcomes = [
        Outcome(OutcomeKind.INVALID_TOKEN, reason="Unregistered"),
        Outcome(OutcomeKind.OK),
        Outcome(OutcomeKind.PERMANENT, reason="PayloadTooLarge"),
        Outcome(OutcomeKind.INVALID_TOKEN, reason="410 Gone"),
    ]
    detail = batch_detail(DEVICES, outcomes, retrying=False)
    reports = dict(device_reports(DEVICES, detail, event_id=7, batch_key="7/0/0"))
    assert reports["devices.retired"] == {
        "event_id": 7,
        "batch": "7/0/0",
        "live_activity": False,
        "devices": [
            {"device_id": 1, "platform": "apns", "token": "aa", "reason": "Unregistered"},
            {
                "device_id": 4,
                "platform": "webpush",
                "token": "https://push.example/x",
                "reason": "410 Gone",
            },
        ],
    }
    assert [d["device_id"] for d in reports["devices.failed"]["devices"]] == [3]


def test_a_batch_sent_to_every_device_reports_nothing() -> None:
    outcomes = [Outcome(OutcomeKind.OK)] * 4
    assert (
        device_reports(
            DEVICES, batch_detail(DEVICES, outcomes, retrying=False), event_id=7, batch_key="k"
        )
        == []
    )


def test_retries_used_up_are_failed_and_retries_to_come_are_not_reported() -> None:
    outcomes = [Outcome(OutcomeKind.RETRY, reason="429")] * 4
    retrying = batch_detail(DEVICES, outcomes, retrying=True)
    assert device_reports(DEVICES, retrying, event_id=7, batch_key="k") == []
    exhausted = batch_detail(DEVICES, outcomes, retrying=False)
    [(kind, payload)] = device_reports(DEVICES, exhausted, event_id=7, batch_key="k")
    assert kind == "devices.failed" and len(payload["devices"]) == 4
    assert payload["devices"][0]["reason"] == "retries exhausted; last: 429"


def test_a_batch_given_up_reports_every_device_failed_for_the_give_ups_reason() -> None:
    reason = "given up after 5 resends: timeout"
    assert given_up_report(DEVICES[:2], event_id=7, batch_key="7/0/1", reason=reason) == (
        "devices.failed",
        {
            "event_id": 7,
            "batch": "7/0/1",
            "live_activity": False,
            "devices": [
                {"device_id": 1, "platform": "apns", "token": "aa", "reason": reason},
                {"device_id": 2, "platform": "fcm", "token": "bb", "reason": reason},
            ],
        },
    )
    assert given_up_report([], event_id=7, batch_key="7/0/1", reason=reason) is None
