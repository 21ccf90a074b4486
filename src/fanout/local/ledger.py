"""What a local push service received: how many times each device got each event's push.

The sink and the emulators record every push they accept here; ``fanout demo`` and the
tests read it to check that every device got every event exactly once.

A push is counted under its event, which the ledger knows by the push's collapse key:
the event id, unless the publisher set a collapse key of its own. So four events to the
same two devices are eight first deliveries, not two and six duplicates.

Memory stays flat as devices and events grow: an event's counts are one byte per device
over a window of device ids, not a dict entry per device, and only the most recent
``events_kept`` events are kept (the totals count every event).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

# Events whose per-device counts are kept; an older event's are dropped when a new one
# arrives, so a push of it after that counts as a first delivery again.
EVENTS_KEPT = 16
# The widest window of device ids an event counts densely (bytes): 4 MiB covers four
# million consecutive device ids. Ids beyond it are counted in a dict.
MAX_WINDOW = 4 * 1024 * 1024
# How many of the keys of events that had duplicates ``stats()`` lists.
KEYS_LISTED = 100


class EventCounts:
    """How many times each device received one event's push.

    Integer device ids are counted in a bytearray (saturating at 255) over a window of
    ids: ``expected`` if given, else a window that grows (doubling) around the ids seen,
    up to ``MAX_WINDOW``. Other ids, and tokens (the emulators count by token), go to a
    dict.
    """

    __slots__ = ("_dense", "_fixed", "_sparse", "_start", "duplicates", "received", "unique")

    def __init__(self, expected: range | None = None) -> None:
        self._fixed = expected is not None
        self._start = expected.start if expected is not None else 0
        self._dense = bytearray(len(expected)) if expected is not None else bytearray()
        self._sparse: dict[int | str, int] = {}
        self.received = 0
        self.unique = 0
        self.duplicates = 0

    def record(self, device_id: int | str) -> int:
        """Count one push; returns how many this device had received before."""
        self.received += 1
        index = self._index(device_id, grow=True)
        if index is not None:
            seen = self._dense[index]
            self._dense[index] = min(seen + 1, 255)
        else:
            seen = self._sparse.get(device_id, 0)
            self._sparse[device_id] = seen + 1
        if seen:
            self.duplicates += 1
        else:
            self.unique += 1
        return seen

    def count(self, device_id: int | str) -> int:
        index = self._index(device_id, grow=False)
        return self._dense[index] if index is not None else self._sparse.get(device_id, 0)

    def memory_bytes(self) -> int:
        """The counts' own size: the window's bytes, and a rough 100 bytes a dict entry."""
        return len(self._dense) + 100 * len(self._sparse)

    def _index(self, device_id: int | str, *, grow: bool) -> int | None:
        if not isinstance(device_id, int) or device_id < 0:
            return None
        offset = device_id - self._start
        if 0 <= offset < len(self._dense):
            return offset
        if self._fixed or not grow:
            return None
        if not self._dense:
            self._start, self._dense = device_id, bytearray(1024)
            return 0
        return self._widen(device_id)

    def _widen(self, device_id: int) -> int | None:
        """Widen the window to take ``device_id``, at least doubling it; None if it would
        pass ``MAX_WINDOW``. The window only grows, so an id out of its reach once stays
        out of reach, and is always counted in the dict."""
        size = len(self._dense)
        end = self._start + size
        if device_id >= end:
            needed = device_id - end + 1
            grow = min(max(needed, size), MAX_WINDOW - size)
            if grow < needed:
                return None
            self._dense.extend(bytes(grow))
        else:
            needed = self._start - device_id
            grow = min(max(needed, size), MAX_WINDOW - size, self._start)
            if grow < needed:
                return None
            self._dense[0:0] = bytes(grow)
            self._start -= grow
        return device_id - self._start


class DeliveryLedger:
    """Pushes received, per event and device; totals over every event ever recorded.

    ``expected_ids`` (or ``expect()``): the device ids to count densely in each event,
    when the caller knows them, as the demo does; otherwise each event's window follows
    the ids it sees.
    """

    def __init__(
        self, expected_ids: range | None = None, *, events_kept: int = EVENTS_KEPT
    ) -> None:
        self._expected = expected_ids
        self._events: OrderedDict[str, EventCounts] = OrderedDict()
        self.events_kept = events_kept
        self.events_forgotten = 0
        self.received = 0
        self.duplicates = 0
        self.unique = 0
        self.duplicate_collapse_keys: set[str] = set()

    def expect(self, expected_ids: range) -> None:
        """Count these ids densely from now on (before anything was recorded)."""
        if self.received:
            raise RuntimeError("expect() must come before the first push")
        self._expected = expected_ids

    def record(self, device_id: int | str, collapse_key: str) -> None:
        """One push of the event ``collapse_key`` accepted for ``device_id``."""
        event = self._events.get(collapse_key)
        if event is None:
            event = self._events[collapse_key] = EventCounts(self._expected)
            if len(self._events) > self.events_kept:
                self._events.popitem(last=False)
                self.events_forgotten += 1
        else:
            self._events.move_to_end(collapse_key)
        self.received += 1
        if event.record(device_id):
            self.duplicates += 1
            if len(self.duplicate_collapse_keys) < KEYS_LISTED:
                self.duplicate_collapse_keys.add(collapse_key)
        else:
            self.unique += 1

    def count(self, device_id: int | str, collapse_key: str) -> int:
        """How many times ``device_id`` received the event (0 if it was forgotten)."""
        event = self._events.get(collapse_key)
        return event.count(device_id) if event is not None else 0

    def events(self) -> dict[str, EventCounts]:
        """The events kept, least recently pushed first."""
        return dict(self._events)

    def stats(self) -> dict[str, Any]:
        """Totals over every event, and each kept event's counts (``GET /stats``)."""
        return {
            "received": self.received,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "duplicate_collapse_keys": sorted(self.duplicate_collapse_keys),
            "events": {
                key: {"received": e.received, "unique": e.unique, "duplicates": e.duplicates}
                for key, e in self._events.items()
            },
            "events_forgotten": self.events_forgotten,
        }
