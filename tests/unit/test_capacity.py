"""bench/capacity.py's model: its arithmetic on cases worked out by hand."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("capacity", BENCH / "capacity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capacity"] = module
    spec.loader.exec_module(module)
    return module


capacity = _load()
Costs, Limits, Settings = capacity.Costs, capacity.Limits, capacity.Settings


def test_standard_mode_starts_at_5_and_adds_300_a_minute_up_to_its_ceiling() -> None:
    limits = Limits()
    assert capacity.concurrency("standard", 0, 1000, limits) == 5
    assert capacity.concurrency("standard", 60, 1000, limits) == 305
    assert capacity.concurrency("standard", 3600, 10_000, limits) == 1250
    assert capacity.concurrency("standard", 3600, 100, limits) == 100  # MaximumConcurrency


def test_provisioned_mode_adds_1000_a_minute_up_to_maximum_concurrency() -> None:
    limits = Limits()
    assert capacity.concurrency("provisioned", 0, 1000, limits) == 10
    assert capacity.concurrency("provisioned", 30, 1000, limits) == 510
    assert capacity.concurrency("provisioned", 600, 5000, limits) == 1000
    with pytest.raises(ValueError, match="mode"):
        capacity.concurrency("eager", 0, 10, limits)


def test_the_fullest_batch_fits_one_sqs_message() -> None:
    costs, limits = Costs(), Limits()
    most = capacity.largest_batch(costs, limits)
    assert capacity.batch_bytes(most, costs) <= 0.9 * limits.sqs_message_bytes
    assert 15_000 < most < 16_500  # ~16,000 APNs devices a MiB, as measured
    with pytest.raises(ValueError, match="batch_devices"):
        capacity.simulate(1000, Settings(1000, most + 1, 10, 10), "standard", fcm_share=0)


def test_one_batch_takes_cold_start_plus_fanout_plus_delivery_time() -> None:
    costs = Costs(fanout_per_second=10_000, delivery_per_second=1_000, devices_per_subscriber=1)
    outcome = capacity.simulate(
        1_000, Settings(10_000, 1_000, 10, 10), "standard", fcm_share=0, costs=costs, step=0.001
    )
    # 1 s cold start, 0.1 s to read the 1,000 devices, 1 s to send them.
    assert outcome.seconds == pytest.approx(2.1, abs=0.01)
    assert (outcome.shards, outcome.batches) == (1, 1)
    assert outcome.lambda_invocations == 2


def test_the_fcm_quota_bounds_the_last_push_whatever_the_concurrency() -> None:
    # 1.2M devices, half on FCM at 10,000/s: at least 60 s, however many invocations.
    outcome = capacity.simulate(
        1_200_000, Settings(50_000, 14_000, 1000, 1000), "provisioned", fcm_share=0.5
    )
    assert outcome.seconds >= 60
    assert outcome.seconds < 65
    assert outcome.limited_by == "FCM quota"


def test_sqs_is_billed_per_64_kb_of_each_batch_sent_and_received() -> None:
    costs, limits = Costs(), Limits()
    settings = Settings(shard_size=1_000_000, batch_devices=14_000, fanout_concurrency=2,
                        delivery_concurrency=2)  # fmt: skip
    outcome = capacity.simulate(1_200_000, settings, "standard", fcm_share=0)
    per_message = math.ceil(capacity.batch_bytes(14_000, costs) / limits.sqs_billing_bytes)
    shards = 1
    batches = math.ceil(1_200_000 / 14_000)
    assert outcome.batches == batches
    assert outcome.sqs_billed_requests == batches * (2 * per_message + 1) + 3 * shards


def test_best_settings_spend_no_more_invocations_than_a_quota_lets_work() -> None:
    settings, outcome = capacity.best_settings(1_000_000, "standard", fcm_share=0.5)
    # 10,000 FCM/s is 20,000 devices/s of a half-FCM event: two invocations' worth.
    assert settings.delivery_concurrency <= 3
    assert outcome.limited_by == "FCM quota"


def test_without_fcm_more_concurrency_reaches_the_last_push_sooner() -> None:
    standard = capacity.best_settings(10_000_000, "standard", fcm_share=0)[1]
    provisioned = capacity.best_settings(10_000_000, "provisioned", fcm_share=0)[1]
    assert provisioned.seconds < standard.seconds
