"""Notifications/second per provider, against the local push services in another process.

    python bench/providers.py [--devices 6000] [--runs 3] [--json] [--open-tokens]

Starts `fanout emulators` (APNs, FCM and a Web Push service over HTTP/2 + TLS, which
verify JWTs and decrypt every Web Push payload) as a separate process, then sends from
this one through each provider exactly as the delivery stage does: one rendered
notification to a batch of devices. Prints the median of the runs per provider.

--open-tokens: each provider twice, runs interleaved, without and with the per-device
``fo_open`` open token (FANOUT_OPEN_TOKEN_KEY set), and the ratio of the two (issue #24:
at least 0.95 of the rate without).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time
from typing import Any

import orjson
from pydantic import SecretStr

from fanout.config import Settings
from fanout.notification import Notification, render
from fanout.providers import OutcomeKind, build_providers
from fanout.queue.messages import Device
from fanout.runtime import eventloop

BATCH = 2000  # devices per provider call, as in a delivery batch


def devices_for(platform: str, count: int, info: dict[str, Any]) -> list[Device]:
    if platform == "apns":
        return [Device(i, "apns", secrets.token_hex(32)) for i in range(count)]
    if platform == "fcm":
        return [Device(i, "fcm", f"f{i}:APA91b{secrets.token_urlsafe(110)}") for i in range(count)]
    base = info["webpush_endpoint_base"]
    return [
        Device(i, "webpush", f"{base}{secrets.token_hex(8)}", "en", info["p256dh"], info["auth"])
        for i in range(count)
    ]


async def measure(
    info: dict[str, Any], devices: int, runs: int, platforms: list[str], open_tokens: bool = False
) -> dict[str, dict[str, Any]]:
    settings = Settings(
        **{k.removeprefix("FANOUT_").lower(): v for k, v in info["settings"].items()}
    )
    variants = {"": build_providers(settings.model_copy(update={"open_token_key": None}))}
    if open_tokens:
        key = SecretStr(secrets.token_urlsafe(32))
        variants["+fo_open"] = build_providers(settings.model_copy(update={"open_token_key": key}))
    notification = render(
        Notification(title="New book", body="The Long Fan-Out is out today"),
        "en",
        collapse_key="1",
        event_id=1,  # as the delivery stage renders it: the open tokens name the event
    )
    results = {}
    for platform in platforms:
        for providers in variants.values():  # warm: connect, token
            await providers[platform].send(notification, devices_for(platform, 200, info))
        rates: dict[str, list[float]] = {variant: [] for variant in variants}
        cpu_costs: dict[str, list[float]] = {variant: [] for variant in variants}
        failures = dict.fromkeys(variants, 0)
        for _ in range(runs):
            for variant, providers in variants.items():  # interleaved: the same load on each
                provider = providers[platform]
                targets = devices_for(platform, devices, info)
                started, cpu_started = time.perf_counter(), time.process_time()
                for i in range(0, len(targets), BATCH):
                    outcomes = await provider.send(notification, targets[i : i + BATCH])
                    failures[variant] += sum(o.kind is not OutcomeKind.OK for o in outcomes)
                rates[variant].append(devices / (time.perf_counter() - started))
                cpu_costs[variant].append((time.process_time() - cpu_started) / devices * 1e6)
        for variant in variants:
            results[platform + variant] = {
                "median_per_second": round(statistics.median(rates[variant])),
                "runs": [round(r) for r in rates[variant]],
                # CPU this process spent per notification: what bounds one worker, and far
                # steadier than the rate on a machine with other work on it.
                "cpu_us_per_notification": round(statistics.median(cpu_costs[variant]), 1),
                "failures": failures[variant],
            }
        if open_tokens:
            off, on = results[platform], results[platform + "+fo_open"]
            on["cpu_us_added"] = round(
                on["cpu_us_per_notification"] - off["cpu_us_per_notification"], 1
            )
            on["rate_ratio"] = round(on["median_per_second"] / off["median_per_second"], 3)
        for providers in variants.values():
            await providers[platform].aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="this process's loop"
    )
    parser.add_argument("--connections", type=int, default=None, help="per push service")
    parser.add_argument("--only", default="apns,fcm,webpush", help="providers, comma-separated")
    parser.add_argument(
        "--open-tokens", action="store_true", help="compare without and with fo_open tokens"
    )
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-m", "fanout", "emulators"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        info = orjson.loads(server.stdout.readline())
        if args.connections:
            info["settings"]["FANOUT_PROVIDER_CONNECTIONS"] = args.connections
        results = eventloop.run(
            measure(info, args.devices, args.runs, args.only.split(","), args.open_tokens),
            args.loop,
        )
    finally:
        server.terminate()
        server.wait(timeout=15)

    print(f"{'provider':<18}{'median/s':>10}{'CPU µs/push':>13}   runs/s")
    for platform, r in results.items():
        versus = (
            f"  ratio={r['rate_ratio']} (+{r['cpu_us_added']} µs CPU)" if "rate_ratio" in r else ""
        )
        print(
            f"{platform:<18}{r['median_per_second']:>10,}{r['cpu_us_per_notification']:>13}"
            f"   {r['runs']}  failures={r['failures']}{versus}"
        )
    print(
        f"({args.devices} devices a run, {BATCH} per call, {args.loop} loop; "
        "push services in a second process)"
    )
    if args.json:
        print(orjson.dumps(results).decode())


if __name__ == "__main__":
    main()
