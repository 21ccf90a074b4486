"""Time to the last push, and the bill, for one event on AWS: a model, not a measurement.

    python bench/capacity.py [--fanout-rate 220000] [--delivery-rate 14000]
                             [--fcm-share 0.5] [--fcm-quota 600000] [--json]

From the stage costs bench/pipeline.py measured (docs/performance.md: a fan-out process
reads ~220,000 devices/s, a delivery process sends ~14,000/s) and AWS's and FCM's documented
limits, for 100k, 1M and 10M devices under both Lambda SQS scaling modes, it finds the
settings (shard size, devices per batch, each function's MaximumConcurrency) that reach the
last push soonest, the cheapest among those within 2% of the soonest, and prints them with
the time and the bill. Assumptions a reader should weigh are the ``Limits`` and ``Costs``
defaults; every figure they lead to is worked out below, nothing is run.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cost import PRICES  # AWS list prices, us-east-1

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Documented limits (AWS Lambda and SQS, FCM), as of 2025."""

    # Lambda's SQS event source, standard mode: 5 concurrent invocations at first, then up
    # to 300 more a minute, at most 1,250 per event source.
    standard_start: int = 5
    standard_per_minute: int = 300
    standard_max: int = 1_250
    # Provisioned mode: MinimumPollers (2 by default) pollers of up to 5 invocations each
    # from the start, then up to 1,000 more a minute.
    provisioned_start: int = 10
    provisioned_per_minute: int = 1_000
    # An event source's ScalingConfig.MaximumConcurrency: 2 to 1,000.
    max_concurrency: int = 1_000
    # FCM: 600,000 messages a minute per project by default (429 above).
    fcm_per_minute: int = 600_000
    # SQS: messages up to 1 MiB (fanout fills 90% of it), billed per 64 KB; 10 a batch.
    sqs_message_bytes: int = MIB
    sqs_billing_bytes: int = 64 * 1024
    sqs_batch: int = 10


@dataclass(frozen=True)
class Costs:
    """What fanout costs per device and per invocation (docs/performance.md)."""

    fanout_per_second: float = 220_000  # devices/s a fan-out invocation reads and packs
    delivery_per_second: float = 14_000  # pushes/s a delivery invocation sends
    # A 1 MiB message carries ~16,000 APNs devices once compressed (0.9 MiB / 16,000).
    bytes_per_device: float = 59.0
    devices_per_subscriber: float = 1.2
    cold_start_seconds: float = 1.0  # a new execution environment: VPC, imports, connect
    memory_gb: float = 1.0  # MemorySize 1024 in deploy/template.yaml


@dataclass(frozen=True)
class Settings:
    shard_size: int  # subscribers a fan-out shard (FANOUT_SHARD_SIZE)
    batch_devices: int  # devices a delivery batch (from FANOUT_BATCH_MAX_BYTES)
    fanout_concurrency: int  # FanoutMaxConcurrency
    delivery_concurrency: int  # DeliveryMaxConcurrency


@dataclass(frozen=True)
class Outcome:
    seconds: float  # publish to the last push
    limited_by: str
    shards: int
    batches: int
    peak_fanout: int  # invocations at once, at most
    peak_delivery: int
    sqs_billed_requests: int
    lambda_invocations: int
    lambda_gb_seconds: float
    usd: float


def concurrency(mode: str, seconds: float, cap: int, limits: Limits) -> int:
    """Invocations an event source allows ``seconds`` after its queue got work."""
    if mode == "standard":
        ramp = limits.standard_start + limits.standard_per_minute * seconds / 60
        ceiling = limits.standard_max
    elif mode == "provisioned":
        ramp = limits.provisioned_start + limits.provisioned_per_minute * seconds / 60
        ceiling = limits.max_concurrency
    else:
        raise ValueError(f"mode must be standard or provisioned, not {mode!r}")
    return max(1, min(cap, ceiling, math.floor(ramp)))


def batch_bytes(devices: int, costs: Costs) -> float:
    return devices * costs.bytes_per_device + 4096  # plus the notification (≤ 4 KB)


def largest_batch(costs: Costs, limits: Limits) -> int:
    """Devices in the fullest message fanout sends (90% of the queue's limit)."""
    return int((0.9 * limits.sqs_message_bytes - 4096) / costs.bytes_per_device)


def simulate(
    devices: int,
    settings: Settings,
    mode: str,
    *,
    fcm_share: float,
    costs: Costs = Costs(),
    limits: Limits = Limits(),
    step: float = 0.02,
) -> Outcome:
    """Publish one event to ``devices`` devices; a fluid model in steps of ``step`` s.

    Shards of the same size progress alike, as do batches, so each stage is a count of
    invocations at work and the devices they have left: a shard produces devices at
    ``fanout_per_second`` into batches of ``batch_devices``; a delivery invocation takes one
    batch (BatchSize 1) and sends at ``delivery_per_second``, the FCM devices of all of
    them together at most at the FCM quota. Each function's concurrency follows its event
    source's scaling from the moment its queue first holds work, capped by its setting.
    """
    if settings.batch_devices > largest_batch(costs, limits):
        raise ValueError("batch_devices: more than fits one SQS message")
    subscribers = devices / costs.devices_per_subscriber
    shards = max(1, math.ceil(subscribers / settings.shard_size))
    shard_devices = devices / shards
    batches = shards * math.ceil(shard_devices / settings.batch_devices)
    fcm_rate = limits.fcm_per_minute / 60

    t = costs.cold_start_seconds  # the first fan-out invocation starts
    shards_waiting, fanout_left = shards, float(devices)
    queued = 0.0  # devices in batches on the delivery queue
    delivering = 0.0  # devices in batches taken by delivery invocations
    delivered = 0.0
    first_batch_at: float | None = None
    peak_fanout = peak_delivery = 0
    invocation_seconds = 0.0
    held: dict[str, float] = {}  # seconds each limit held the delivery back
    while delivered < devices - 0.5:
        # Fan-out: shards start as the event source lets invocations in.
        running = math.ceil(fanout_left / shard_devices - 1e-9) - shards_waiting
        allowed = concurrency(mode, t, settings.fanout_concurrency, limits)
        starting = min(shards_waiting, max(0, allowed - running))
        shards_waiting -= starting
        running += starting
        peak_fanout = max(peak_fanout, running)
        produced = min(
            fanout_left - shards_waiting * shard_devices, running * costs.fanout_per_second * step
        )
        fanout_left -= produced
        queued += produced
        invocation_seconds += running * step
        if queued > 0 and first_batch_at is None:
            first_batch_at = t
        # Delivery: an invocation per batch, as many as the event source allows.
        if first_batch_at is not None:
            busy = math.ceil(delivering / settings.batch_devices - 1e-9)
            allowed = concurrency(mode, t - first_batch_at, settings.delivery_concurrency, limits)
            whole = (
                queued
                if fanout_left <= 0
                else math.floor(queued / settings.batch_devices) * settings.batch_devices
            )
            taking = min(whole, max(0, allowed - busy) * settings.batch_devices)
            queued -= taking
            delivering += taking
            busy = math.ceil(delivering / settings.batch_devices - 1e-9)
            peak_delivery = max(peak_delivery, busy)
            by_cpu = busy * costs.delivery_per_second * step
            by_quota = fcm_rate * step / fcm_share if fcm_share > 0 else math.inf
            sent = min(delivering, by_cpu, by_quota)
            reason = _holding_back(
                sent < delivering and by_quota < by_cpu,
                busy >= allowed and queued > 0,
                allowed >= settings.delivery_concurrency,
                fanout_left > 0,
            )
            held[reason] = held.get(reason, 0.0) + step
            delivering -= sent
            delivered += sent
            invocation_seconds += busy * step
        t += step
    limited_by = max(held, key=lambda r: held[r]) if held else "fan-out"
    return _bill(
        devices,
        settings,
        t,
        limited_by,
        shards,
        batches,
        peak_fanout,
        peak_delivery,
        invocation_seconds,
        costs,
        limits,
    )


def _holding_back(quota: bool, saturated: bool, at_cap: bool, fanning_out: bool) -> str:
    if quota:
        return "FCM quota"
    if saturated:
        return "concurrency cap" if at_cap else "scaling ramp"
    if fanning_out:
        return "fan-out"
    return "delivery"


def _bill(
    devices: int,
    settings: Settings,
    seconds: float,
    limited_by: str,
    shards: int,
    batches: int,
    peak_fanout: int,
    peak_delivery: int,
    invocation_seconds: float,
    costs: Costs,
    limits: Limits,
) -> Outcome:
    """SQS as billed (a request per 64 KB of each message, sent and received; deletes and
    the fan-out's small messages one each), Lambda requests and GB-seconds (with a cold
    start per execution environment)."""
    per_batch = math.ceil(batch_bytes(settings.batch_devices, costs) / limits.sqs_billing_bytes)
    sqs = batches * (2 * per_batch + 1) + shards * 3
    invocations = shards + batches
    environments = peak_fanout + peak_delivery
    gb_seconds = (invocation_seconds + environments * costs.cold_start_seconds) * costs.memory_gb
    usd = (
        sqs * PRICES["sqs_per_million_requests"] / 1e6
        + invocations * PRICES["lambda_per_million_requests"] / 1e6
        + gb_seconds * PRICES["lambda_per_gb_second_arm64"]
    )
    return Outcome(
        seconds=round(seconds, 2),
        limited_by=limited_by,
        shards=shards,
        batches=batches,
        peak_fanout=peak_fanout,
        peak_delivery=peak_delivery,
        sqs_billed_requests=sqs,
        lambda_invocations=invocations,
        lambda_gb_seconds=round(gb_seconds, 1),
        usd=round(usd, 4),
    )


SHARD_SIZES = (5_000, 20_000, 50_000, 200_000)
BATCH_SIZES = (500, 2_000, 4_000, 14_000)


def best_settings(
    devices: int,
    mode: str,
    *,
    fcm_share: float,
    costs: Costs = Costs(),
    limits: Limits = Limits(),
) -> tuple[Settings, Outcome]:
    """The soonest last push over the candidate shard and batch sizes (concurrency at the
    most an event source takes), then the cheapest within 2% of it; the concurrency
    reported is what that plan used at its peak, the setting that reaches it."""
    tried = []
    for shard_size in SHARD_SIZES:
        for batch in BATCH_SIZES:
            if batch > largest_batch(costs, limits):
                continue
            settings = Settings(shard_size, batch, limits.max_concurrency, limits.max_concurrency)
            outcome = simulate(
                devices, settings, mode, fcm_share=fcm_share, costs=costs, limits=limits
            )
            tried.append((settings, outcome))
    soonest = min(outcome.seconds for _, outcome in tried)
    settings, outcome = min(
        (pair for pair in tried if pair[1].seconds <= soonest * 1.02), key=lambda p: p[1].usd
    )
    return _fewest_invocations(devices, settings, outcome, mode, fcm_share, costs, limits)


def _fewest_invocations(
    devices: int,
    settings: Settings,
    outcome: Outcome,
    mode: str,
    fcm_share: float,
    costs: Costs,
    limits: Limits,
) -> tuple[Settings, Outcome]:
    """The lowest delivery MaximumConcurrency that still reaches the last push within 2%:
    invocations beyond what a quota lets send only wait, and are billed for it."""
    settings = replace(settings, fanout_concurrency=max(2, outcome.peak_fanout))
    low, high = 2, max(2, outcome.peak_delivery)
    best = replace(settings, delivery_concurrency=high), outcome
    while low < high:
        middle = (low + high) // 2
        trial = replace(settings, delivery_concurrency=middle)
        result = simulate(devices, trial, mode, fcm_share=fcm_share, costs=costs, limits=limits)
        if result.seconds <= outcome.seconds * 1.02:
            best, high = (trial, result), middle
        else:
            low = middle + 1
    return best


SIZES = (100_000, 1_000_000, 10_000_000)
MODES = ("standard", "provisioned")


def table(fcm_share: float, costs: Costs, limits: Limits) -> list[dict[str, Any]]:
    rows = []
    for devices in SIZES:
        for mode in MODES:
            settings, outcome = best_settings(
                devices, mode, fcm_share=fcm_share, costs=costs, limits=limits
            )
            rows.append({"devices": devices, "mode": mode, **asdict(settings), **asdict(outcome)})
    return rows


HEADINGS = (
    "devices", "mode", "last push", "limited by", "shard size", "batch", "fan-out conc.",
    "delivery conc.", "SQS billed", "Lambda GB-s", "cost",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fanout-rate", type=float, default=Costs.fanout_per_second)
    parser.add_argument("--delivery-rate", type=float, default=Costs.delivery_per_second)
    parser.add_argument("--fcm-share", type=float, default=0.5, help="of the devices, 0-1")
    parser.add_argument("--fcm-quota", type=int, default=Limits.fcm_per_minute, help="a minute")
    parser.add_argument("--cold-start", type=float, default=Costs.cold_start_seconds)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    costs = Costs(args.fanout_rate, args.delivery_rate, cold_start_seconds=args.cold_start)
    limits = Limits(fcm_per_minute=args.fcm_quota)
    rows = table(args.fcm_share, costs, limits)
    if args.json:
        print(orjson.dumps(rows).decode())
        return
    print(
        f"fan-out {costs.fanout_per_second:,.0f} devices/s and delivery "
        f"{costs.delivery_per_second:,.0f}/s per invocation; {args.fcm_share:.0%} of devices "
        f"on FCM at {limits.fcm_per_minute:,}/min; cold start {costs.cold_start_seconds:g} s"
    )
    print("| " + " | ".join(HEADINGS) + " |")
    print("|" + "---|" * len(HEADINGS))
    for r in rows:
        print(
            f"| {r['devices']:,} | {r['mode']} | {r['seconds']:,.1f} s | {r['limited_by']} | "
            f"{r['shard_size']:,} | {r['batch_devices']:,} | {r['fanout_concurrency']:,} | "
            f"{r['delivery_concurrency']:,} | {r['sqs_billed_requests']:,} | "
            f"{r['lambda_gb_seconds']:,.0f} | ${r['usd']:.4f} |"
        )


if __name__ == "__main__":
    main()
