"""A batch's outcome per device, in the form the delivery records it for the operator
console: devices per (platform, outcome), and one row for each device it did not send to.

Never a row per device sent to: at a million devices that would be a million rows per
event for the answer "sent", which a done batch without a row for the device already gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fanout.providers import Outcome, OutcomeKind
from fanout.queue.messages import Device

NO_PROVIDER = "no provider configured for this platform"


@dataclass(slots=True)
class BatchDetail:
    by_platform: dict[str, dict[str, int]] = field(default_factory=dict)
    # The rows of delivery_failures, as columns: one entry per device not sent to.
    device_ids: list[int] = field(default_factory=list)
    platforms: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # invalid, failed, retried, skipped
    reasons: list[str | None] = field(default_factory=list)

    def note(self, device: Device, kind: str, reason: str | None = None) -> None:
        counts = self.by_platform.setdefault(device.platform, {})
        counts[kind] = counts.get(kind, 0) + 1
        if kind != "sent":
            self.device_ids.append(device.id)
            self.platforms.append(device.platform)
            self.kinds.append(kind)
            self.reasons.append(reason)


def batch_detail(
    devices: Sequence[Device], outcomes: Sequence[Outcome | None], *, retrying: bool
) -> BatchDetail:
    """Each device's outcome as recorded; ``retrying``: the devices to retry go into a retry
    batch (else they have used their attempts and count failed)."""
    detail = BatchDetail()
    for device, outcome in zip(devices, outcomes, strict=True):
        if outcome is None:
            detail.note(device, "skipped", NO_PROVIDER)
        elif outcome.kind is OutcomeKind.OK:
            detail.note(device, "sent")
        elif outcome.kind is OutcomeKind.INVALID_TOKEN:
            detail.note(device, "invalid", outcome.reason)
        elif outcome.kind is OutcomeKind.RETRY and retrying:
            detail.note(device, "retried", outcome.reason)
        elif outcome.kind is OutcomeKind.RETRY:
            detail.note(device, "failed", f"retries exhausted; last: {outcome.reason}")
        elif outcome.kind is OutcomeKind.HELD:  # by a config-error breaker, sent later
            detail.note(device, "held", outcome.reason)
        else:
            detail.note(device, "failed", outcome.reason or outcome.kind.value)
    return detail
