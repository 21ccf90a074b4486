"""The delivery's sending of many batches at once (stages/delivery.py ``send_parts``), with a
provider that only records what it was asked."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fanout.notification import Notification, RenderedNotification
from fanout.providers import Outcome, OutcomeKind, Provider
from fanout.queue.messages import Device
from fanout.stages.delivery import SendPart, send_parts


class Recording(Provider):
    platforms = frozenset({"apns"})

    def __init__(self) -> None:
        self.calls: list[list[tuple[RenderedNotification, list[Device]]]] = []

    async def send(
        self, notification: RenderedNotification, devices: Sequence[Device]
    ) -> list[Outcome]:
        raise AssertionError("a bundle's batches go in one send_groups call")

    async def send_groups(
        self, groups: Sequence[tuple[RenderedNotification, Sequence[Device]]]
    ) -> list[list[Outcome]]:
        self.calls.append([(n, list(devices)) for n, devices in groups])
        return [
            [Outcome(OutcomeKind.OK, reason=f"{n.event_id}/{d.id}") for d in devices]
            for n, devices in groups
        ]


def test_many_batches_go_to_a_provider_in_one_call_each_device_with_its_own_event() -> None:
    # 300 one- or two-device batches, each its own event's, in two locales: one call, and
    # every device in a group rendered from its own event's notification.
    parts = [
        SendPart(
            Notification(title=f"for event {event}"),
            str(event),
            [
                Device(event * 10 + d, "apns", f"{event:060x}{d:04x}", ("en", "de")[d])
                for d in range(1 + event % 2)
            ],
        )
        for event in range(1, 301)
    ]
    provider = Recording()
    outcomes = asyncio.run(send_parts(parts, {"apns": provider}))

    assert len(provider.calls) == 1
    for rendered, devices in provider.calls[0]:
        assert rendered.title == f"for event {rendered.event_id}"
        assert all(device.id // 10 == rendered.event_id for device in devices)
    for part, its_outcomes in zip(parts, outcomes, strict=True):
        assert [o.reason if o else None for o in its_outcomes] == [
            f"{part.collapse_key}/{d.id}" for d in part.devices
        ]


def test_a_device_no_provider_serves_has_no_outcome() -> None:
    parts = [
        SendPart(Notification(title="t"), "1", [Device(1, "fcm", "x"), Device(2, "apns", "y")])
    ]
    outcomes = asyncio.run(send_parts(parts, {"apns": Recording()}))
    assert outcomes[0][0] is None and outcomes[0][1] is not None
