"""Packing a stream of subscribers' devices into delivery batches sized by bytes.

Pure logic: no I/O. The fan-out stage feeds users in user-id order; the packer closes
a batch before it would outgrow ``max_bytes`` and never splits one user's devices
across two batches, so every batch covers a closed range of users and its key
(``s<shard>:<first user>-<last user>``) names exactly what it holds. A batch
re-packed from the same rows after a crash gets the same key, and the delivery
stage sends it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from fanout.messages import DeliveryBatch, Device

# Room for the envelope's punctuation, key and attempt beyond the notification JSON.
_ENVELOPE_SLACK = 160


class BatchPacker:
    """Accumulates users' devices; hands back each batch as soon as it is full."""

    def __init__(
        self, *, event_id: int, shard: int, notification: dict[str, Any], max_bytes: int
    ) -> None:
        self.event_id = event_id
        self.shard = shard
        self.notification = notification
        self.max_bytes = max_bytes
        self._fixed = len(orjson.dumps(notification)) + _ENVELOPE_SLACK
        if self._fixed >= max_bytes:
            raise ValueError(f"max_bytes={max_bytes} leaves no room for devices")
        self._reset()

    def _reset(self) -> None:
        self._devices: dict[str, list[list[Any]]] = {}
        self._size = self._fixed
        self._first_user: int | None = None
        self._last_user: int | None = None
        self._users = 0

    def add_user(self, user_id: int, devices: Sequence[Device]) -> DeliveryBatch | None:
        """Add one user's devices; returns the batch this closed, if any."""
        if not devices:
            return None
        # Each entry costs its JSON plus a separating comma; opening a platform group
        # costs at most 16 bytes (name, quotes, brackets), counted up front.
        entries = [
            (d.platform, wire, len(orjson.dumps(wire)) + 1) for d in devices for wire in [d.wire()]
        ]
        needed = sum(size + 16 for _, _, size in entries)
        if needed + self._fixed > self.max_bytes:
            raise ValueError(f"user {user_id} has more device data than one batch holds")
        closed = None
        if self._first_user is not None and self._size + needed > self.max_bytes:
            closed = self.flush()
        for platform, wire, size in entries:
            group = self._devices.get(platform)
            if group is None:
                group = self._devices[platform] = []
                self._size += 16
            group.append(wire)
            self._size += size
        if self._first_user is None:
            self._first_user = user_id
        self._last_user = user_id
        self._users += 1
        return closed

    def flush(self) -> DeliveryBatch | None:
        """Close the open batch (at the end of a shard); None if it is empty."""
        if self._first_user is None:
            return None
        batch = DeliveryBatch(
            event_id=self.event_id,
            key=f"s{self.shard}:{self._first_user}-{self._last_user}",
            attempt=0,
            notification=self.notification,
            devices=self._devices,
            user_count=self._users,
            last_user=self._last_user or 0,
        )
        self._reset()
        return batch

    @property
    def last_user(self) -> int | None:
        """The last user in the open batch (None when it is empty)."""
        return self._last_user
