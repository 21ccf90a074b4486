"""Packing a stream of subscribers' devices into delivery batches sized by bytes.

Pure logic: no I/O. The fan-out stage feeds rows ``(user id, platform, wire[, held
back])`` in user-id order, one per device, ``wire`` being the device's JSON as PostgreSQL
wrote it (``[id,"token","locale"]``; a user without devices comes as one row with NULLs,
and a user the audience rules held back as one row with NULLs and the reason). Each
held-back user is counted with the first batch that closes after them (or, at the end of
a shard, by ``take_held_back``), so that the shard's checkpoint, which moves its cursor
to that batch's last user, counts them exactly once. The
packer never splits one user's devices across two batches, so every batch covers a
closed range of users and its key (``s<shard>:<first user>-<last user>``) names exactly
what it holds.

Where a batch closes depends only on the rows from its first user on, never on what came
before it: a shard resumed from its checkpoint (the last user of a batch sent) re-packs
the same batches under the same keys, and the delivery stage sends each once.

Messages are compressed when that makes them smaller (see ``messages``), so how many
devices fit is known only once a batch is encoded. A batch gathers device JSON up to
``RAW_PER_MESSAGE_BYTE`` times the message's room (or ``max_devices``) and is closed at
the next user; it is then encoded, and if the message comes out too large it keeps the
users that fit at the ratio measured and the rest start the next batch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from fanout.queue.messages import MAX_DEVICES_PER_BATCH, encode_delivery

# Room for the envelope's punctuation, key and attempt beyond the notification JSON,
# and for opening each platform's group (name, quotes, brackets).
_ENVELOPE_SLACK = 192 + 16 * 3  # 32 of it for "published" (epoch seconds)
# Device JSON gathered per byte of message: APNs batches with locales encode to ~0.72
# of their JSON, so 1.3 fills a message to ~94% in one go; FCM tokens and Web Push keys
# do not compress, and those batches are cut back once to what fits (one more encoding).
RAW_PER_MESSAGE_BYTE = 1.3

Row = Sequence[Any]  # (user id, platform or None, wire JSON or None[, held-back reason])

# Room a notification must leave in a batch for devices: one ordinary device on the wire
# (an APNs token ~80 bytes, an FCM token ~190, a Web Push endpoint with its keys ~400).
# Less, and none of its batches could carry anyone.
MIN_DEVICE_ROOM_BYTES = 512
# Batches fill at most this share of the queue's MaximumMessageSize: the rest is margin
# for SQS's own accounting of attributes.
QUEUE_SHARE = 0.9


_KEY = re.compile(r"^s(\d+):(\d+)-(\d+)$")


def batch_key(shard: int, first_user: int, last_user: int) -> str:
    """A fan-out batch's key: its shard and the closed range of users it holds."""
    return f"s{shard}:{first_user}-{last_user}"


def users_of_key(key: str) -> tuple[int, int] | None:
    """The range of users a fan-out batch's key names; None for a retry batch's key."""
    found = _KEY.match(key)
    return (int(found[2]), int(found[3])) if found else None


def shard_of_key(key: str) -> int | None:
    """The shard a fan-out batch's key names (a retry batch's too); None for other keys."""
    found = _KEY.match(key.split("/r", 1)[0])
    return int(found[1]) if found else None


def batch_max_bytes(configured: int, queue_limit: int) -> int:
    """How large a delivery batch message may be (FANOUT_BATCH_MAX_BYTES, capped by the
    queue's own limit)."""
    return min(configured, int(queue_limit * QUEUE_SHARE))


def room_for_devices(notification: dict[str, Any], max_bytes: int) -> int:
    """Bytes left for devices in a batch of ``max_bytes`` carrying ``notification``."""
    return max_bytes - len(orjson.dumps(notification)) - _ENVELOPE_SLACK


def bytes_short(notification: dict[str, Any], max_bytes: int) -> int:
    """How many bytes too large ``notification`` is for a batch of ``max_bytes`` that must
    also carry one ordinary device; 0 when it fits."""
    return max(0, MIN_DEVICE_ROOM_BYTES - room_for_devices(notification, max_bytes))


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """A delivery batch ready to send: its message body and what it covers."""

    key: str
    body: str
    devices: int
    users: int
    first_user: int
    last_user: int
    user_ids: tuple[int, ...] = ()  # the users it carries, in order
    # Users held back since the previous batch, up to this one's last user: {reason: n}.
    held_back: dict[str, int] = field(default_factory=dict)


def _counted(held: list[tuple[int, str, int]]) -> dict[str, int]:
    """Held-back users by reason."""
    counts: Counter[str] = Counter()
    for _, reason, users in held:
        counts[reason] += users
    return dict(counts)


class BatchPacker:
    """Accumulates rows; hands back each batch as soon as it is full."""

    def __init__(
        self,
        *,
        event_id: int,
        shard: int,
        notification: dict[str, Any],
        max_bytes: int,
        max_devices: int = MAX_DEVICES_PER_BATCH,
        published_at: float | None = None,
    ) -> None:
        self.event_id = event_id
        self.published_at = published_at
        self.shard = shard
        self.notification = notification
        self.max_bytes = max_bytes
        self.max_devices = max_devices
        room = room_for_devices(notification, max_bytes)
        if room <= 0:
            raise ValueError(f"max_bytes={max_bytes} leaves no room for devices")
        self._raw_budget = int(room * RAW_PER_MESSAGE_BYTE)
        self._rows: list[Row] = []  # the open batch's device rows
        self._raw = 0  # their JSON, with a comma each
        self._user: Any = None  # the user whose rows came last
        # Held-back users no batch has counted yet: (last user, reason, how many users).
        self._held: list[tuple[int, str, int]] = []

    def add_rows(self, rows: Iterable[Row]) -> tuple[list[PackedBatch], int]:
        """Add rows; returns the batches this closed and how many users the rows began.

        The one loop of the stage that runs per device, hence its plainness.
        """
        closed: list[PackedBatch] = []
        pending, raw, user, users = self._rows, self._raw, self._user, 0
        raw_budget, device_budget, held = self._raw_budget, self.max_devices, self._held
        for row in rows:
            if row[0] != user:
                users += 1
                user = row[0]
                if raw >= raw_budget or len(pending) >= device_budget:
                    self._raw = raw
                    closed += self._close(everything=False)
                    pending, raw = self._rows, self._raw
            wire = row[2]
            if wire is not None:
                raw += len(wire) + 1
                pending.append(row)
            elif len(row) > 5 and row[5] is not None:
                # A run of users a tag filter left out, this row's user the last of them
                # (fragments.filtered_recipients_query): row[5] users, row[6] of them
                # counted held back for row[3].
                users += row[5] - 1
                if row[3] is not None:
                    held.append((row[0], row[3], row[6]))
            elif len(row) > 3 and row[3] is not None:
                held.append((row[0], row[3], 1))
        self._raw, self._user = raw, user
        return closed, users

    def flush(self) -> list[PackedBatch]:
        """Close whatever is open (at the end of a shard)."""
        return self._close(everything=True)

    def take_held_back(self) -> dict[str, int]:
        """The held-back users no batch has counted, by reason (at the end of a shard,
        after ``flush``: those after its last batch)."""
        counts = _counted(self._held)
        self._held.clear()
        return counts

    def _held_through(self, last_user: int) -> dict[str, int]:
        """Take the held-back users up to ``last_user``, by reason."""
        held = self._held
        taken = 0
        while taken < len(held) and held[taken][0] <= last_user:
            taken += 1
        if not taken:
            return {}
        counts = _counted(held[:taken])
        del held[:taken]
        return counts

    def _close(self, *, everything: bool) -> list[PackedBatch]:
        """Encode the open rows as batches: one, or more where the first came out too
        large. With ``everything`` False, rows cut back from the batch stay open."""
        closed = []
        while self._rows:
            count = len(self._rows)
            while True:
                batch = self._encode(count)
                size = len(batch.body.encode())
                if size <= self.max_bytes and batch.devices <= self.max_devices:
                    break
                count = self._rows_that_fit(count, size)
            if self._held:
                batch = replace(batch, held_back=self._held_through(batch.last_user))
            closed.append(batch)
            del self._rows[:count]
            if not everything:
                break
        self._raw = sum(len(row[2]) + 1 for row in self._rows)
        return closed

    def _rows_that_fit(self, count: int, encoded: int) -> int:
        """Fewer of the first ``count`` rows, ending with a user's last, that should fit at
        the message size per raw byte just measured (``encoded`` for ``count`` rows)."""
        rows = self._rows[:count]
        limit = _start_of_last_user(rows)  # at least the last user goes
        if limit == 0:
            raise ValueError(f"user {rows[0][0]} has more device data than one batch holds")
        budget = float("inf")
        if encoded > self.max_bytes:
            budget = sum(len(row[2]) + 1 for row in rows) * self.max_bytes / encoded * 0.97
        fitting, total = 0, 0
        for index in range(limit):
            total += len(rows[index][2]) + 1
            if total > budget or index >= self.max_devices:
                break
            if rows[index + 1][0] != rows[index][0]:
                fitting = index + 1  # the end of a user
        return fitting or _end_of_first_user(rows)

    def _encode(self, count: int) -> PackedBatch:
        rows = self._rows[:count]
        groups: dict[str, list[str]] = {}
        for row in rows:
            group = groups.get(row[1])
            if group is None:
                group = groups[row[1]] = []
            group.append(row[2])
        devices_json = ",".join(f'"{platform}":[{",".join(w)}]' for platform, w in groups.items())
        first, last = rows[0][0], rows[-1][0]
        key = batch_key(self.shard, first, last)
        body = encode_delivery(
            self.event_id,
            key,
            0,
            self.notification,
            b"{%b}" % devices_json.encode(),
            published_at=self.published_at,
        )
        user_ids = tuple(dict.fromkeys(row[0] for row in rows))
        return PackedBatch(
            key=key,
            body=body,
            devices=count,
            users=len(user_ids),
            first_user=first,
            last_user=last,
            user_ids=user_ids,
        )


def _end_of_first_user(rows: Sequence[Row]) -> int:
    index = 1
    while index < len(rows) and rows[index][0] == rows[0][0]:
        index += 1
    return index


def _start_of_last_user(rows: Sequence[Row]) -> int:
    """Index of the first row of the last user in ``rows`` (0 if only one user)."""
    index = len(rows) - 1
    while index > 0 and rows[index - 1][0] == rows[-1][0]:
        index -= 1
    return index
