from __future__ import annotations

import sys

import pytest

from fanout.local.ledger import MAX_WINDOW, DeliveryLedger, EventCounts


def test_counts_once_and_names_duplicates_by_collapse_key() -> None:
    ledger = DeliveryLedger(range(100, 200))
    for device in (100, 101, 101, "token-a", "token-a"):
        ledger.record(device, "42")
    assert (ledger.received, ledger.unique, ledger.duplicates) == (5, 3, 2)
    assert ledger.duplicate_collapse_keys == {"42"}
    assert ledger.count(101, "42") == 2 and ledger.count("token-a", "42") == 2


def test_each_event_to_the_same_devices_is_a_first_delivery_not_a_duplicate() -> None:
    ledger = DeliveryLedger()
    for event in ("1", "2", "3", "4"):
        for device in (7, 8):
            ledger.record(device, event)
    assert (ledger.received, ledger.unique, ledger.duplicates) == (8, 8, 0)
    ledger.record(8, "3")
    stats = ledger.stats()
    assert stats["duplicates"] == 1 and stats["duplicate_collapse_keys"] == ["3"]
    assert stats["events"]["3"] == {"received": 3, "unique": 2, "duplicates": 1}
    assert stats["events"]["1"] == {"received": 2, "unique": 2, "duplicates": 0}


def test_only_the_most_recent_events_are_kept_and_the_totals_count_them_all() -> None:
    ledger = DeliveryLedger(events_kept=3)
    for event in range(10):
        ledger.record(1, str(event))
    assert list(ledger.events()) == ["7", "8", "9"]
    assert ledger.stats()["events_forgotten"] == 7
    assert (ledger.received, ledger.unique) == (10, 10)
    ledger.record(1, "7")  # pushed again: now the most recent, and the oldest goes first
    ledger.record(1, "10")
    assert list(ledger.events()) == ["9", "7", "10"]


def test_expected_ids_cost_a_byte_each_not_a_dict_entry() -> None:
    ledger = DeliveryLedger()
    ledger.expect(range(1, 1_000_001))
    for device in range(1, 1_000_001, 7):
        ledger.record(device, "1")
    [event] = ledger.events().values()
    assert event.memory_bytes() == 1_000_000
    assert sys.getsizeof(event._dense) < 1_100_000


def test_without_expected_ids_the_window_follows_the_ids_seen() -> None:
    counts = EventCounts()
    ids = list(range(5_000_000, 5_300_000))
    for device in ids[150_000:] + ids[:150_000][::-1]:  # upwards, then downwards
        assert counts.record(device) == 0
    assert counts.unique == 300_000 and counts.duplicates == 0
    assert counts.memory_bytes() < 2 * 300_000  # a byte each, at most doubled
    assert counts.record(5_000_000) == 1 and counts.count(5_299_999) == 1


def test_ids_beyond_the_widest_window_are_still_counted() -> None:
    counts = EventCounts()
    far = 10 * MAX_WINDOW
    for device in (1, far, 2, far, far + 1):
        counts.record(device)
    assert (counts.unique, counts.duplicates) == (4, 1)
    assert counts.count(far) == 2 and counts.count(1) == 1
    assert counts.memory_bytes() < MAX_WINDOW + 1000


def test_expect_comes_before_the_first_push() -> None:
    ledger = DeliveryLedger()
    ledger.record(1, "1")
    with pytest.raises(RuntimeError):
        ledger.expect(range(10))
