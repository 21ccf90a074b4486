"""What the webhooks about a batch's devices say: pure functions over the batch's outcome.

One call per kind per batch, never one per device: ``devices.retired`` lists the tokens
the push services called dead (the app's backend drops them), ``devices.failed`` those
that failed for good (a permanent answer, or retries used up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fanout.queue.messages import Device
from fanout.stages.device_outcomes import BatchDetail

RETIRED = "devices.retired"
FAILED = "devices.failed"
_KIND_OF = {"invalid": RETIRED, "failed": FAILED}


def device_reports(
    devices: Sequence[Device],
    detail: BatchDetail,
    *,
    event_id: int,
    batch_key: str,
    live_activity: bool = False,
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, payload) for each kind with devices in this batch; none if none."""
    # Only devices not sent to are in the detail: a batch sent to every device costs
    # nothing here beyond this check (the delivery's hot path).
    if not any(kind in _KIND_OF for kind in detail.kinds):
        return []
    by_id = {device.id: device for device in devices}
    found: dict[str, list[dict[str, Any]]] = {}
    for device_id, kind, reason in zip(
        detail.device_ids, detail.kinds, detail.reasons, strict=True
    ):
        report = _KIND_OF.get(kind)
        if report is None:
            continue
        device = by_id[device_id]
        found.setdefault(report, []).append(
            {
                "device_id": device_id,
                "platform": device.platform,
                "token": device.token,
                "reason": reason,
            }
        )
    return [
        (
            kind,
            {
                "event_id": event_id,
                "batch": batch_key,
                # A Live Activity's devices are its tokens (device_id: the token's id).
                "live_activity": live_activity,
                "devices": listed,
            },
        )
        for kind, listed in sorted(found.items())
    ]


def given_up_report(
    devices: Sequence[Device],
    *,
    event_id: int,
    batch_key: str,
    reason: str,
    live_activity: bool = False,
) -> tuple[str, dict[str, Any]] | None:
    """The ``devices.failed`` call for a batch the reconciler gave up on (resent too
    often): every device of the batch failed for ``reason``; None if it has none."""
    if not devices:
        return None
    listed = [
        {
            "device_id": device.id,
            "platform": device.platform,
            "token": device.token,
            "reason": reason,
        }
        for device in devices
    ]
    return (
        FAILED,
        {
            "event_id": event_id,
            "batch": batch_key,
            "live_activity": live_activity,
            "devices": listed,
        },
    )
