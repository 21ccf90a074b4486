from __future__ import annotations

import sys

import pytest

from fanout.local.sink import DeliveryLedger


def test_counts_once_and_names_duplicates_by_collapse_key() -> None:
    ledger = DeliveryLedger(range(100, 200))
    for device in (100, 101, 101, "token-a", "token-a"):
        ledger.record(device, "42")
    assert (ledger.received, ledger.unique, ledger.duplicates) == (5, 3, 2)
    assert ledger.duplicate_collapse_keys == {"42"}
    assert ledger.count(101) == 2 and ledger.count("token-a") == 2


def test_expected_ids_cost_a_byte_each_not_a_dict_entry() -> None:
    ledger = DeliveryLedger()
    ledger.expect(range(1, 1_000_001))
    for device in range(1, 1_000_001, 7):
        ledger.record(device, "1")
    assert sys.getsizeof(ledger._dense) < 1_100_000
    assert ledger._sparse == {}


def test_expect_comes_before_the_first_push() -> None:
    ledger = DeliveryLedger()
    ledger.record(1, "1")
    with pytest.raises(RuntimeError):
        ledger.expect(range(10))
