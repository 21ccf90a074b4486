"""The AWS bill per million notifications, fanout against the baseline, from a measured run.

    python bench/cost.py [--subscribers 100000] [--json]      (runs bench/pipeline.py)
    python bench/cost.py --from results.json [--json]         (its --json line, saved)

What is counted, from bench/pipeline.py's figures:
- SQS: every call each process made, billed as SQS bills them: one request per 64 KB of
  payload (fanout.queue.sqs counts this per operation from the HTTP bodies both ways).
- Lambda: an invocation per fan-out shard and per delivery batch for fanout (batch size 1
  in deploy/template.yaml); for the baseline, one per non-empty receive of up to 10
  messages (an SQS event source with batch size 10) and one for its fan-out. GB-seconds
  are the handlers' measured times at the functions' memory size and price by their
  architecture, both read from deploy/template.yaml. Both designs' handlers were timed
  with eight messages in flight in one process, so both figures are upper bounds.
Not counted: RDS and RDS Proxy (the baseline would need far more of them: a query per
subscriber), data transfer, CloudWatch, and the free tiers.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).parent
TEMPLATE = HERE.parent / "deploy" / "template.yaml"

# AWS list prices, us-east-1, standard queues, first pricing tier; Lambda duration by the
# functions' architecture.
PRICES = {
    "sqs_per_million_requests": 0.40,
    "lambda_per_million_requests": 0.20,
    "lambda_per_gb_second_x86_64": 0.0000166667,
    "lambda_per_gb_second_arm64": 0.0000133334,
}


def template_global(name: str) -> str:
    """A setting of the functions in the SAM template (its Globals), e.g. MemorySize."""
    found = re.search(rf"^\s*{name}:\s*\[?(\w+)", TEMPLATE.read_text(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"no {name} in {TEMPLATE}")
    return found.group(1)


def function_memory_mb() -> int:
    return int(template_global("MemorySize"))


def gb_second_price() -> tuple[str, float]:
    architecture = template_global("Architectures")
    return architecture, PRICES[f"lambda_per_gb_second_{architecture}"]


def bill(sqs_usage: dict[str, list[int]], lam: dict[str, float], devices: int) -> dict[str, Any]:
    """Per million notifications."""
    scale = 1_000_000 / devices
    gb = function_memory_mb() / 1024
    billed = sum(billed for _, billed in sqs_usage.values()) * scale
    invocations = lam["invocations"] * scale
    gb_seconds = lam["seconds"] * gb * scale
    sqs = billed * PRICES["sqs_per_million_requests"] / 1e6
    requests = invocations * PRICES["lambda_per_million_requests"] / 1e6
    duration = gb_seconds * gb_second_price()[1]
    return {
        "sqs_requests": round(sum(r for r, _ in sqs_usage.values()) * scale),
        "sqs_billed_requests": round(billed),
        "sqs_usd": round(sqs, 6),
        "lambda_invocations": round(invocations),
        "lambda_requests_usd": round(requests, 6),
        "lambda_gb_seconds": round(gb_seconds, 1),
        "lambda_duration_usd": round(duration, 6),
        "total_usd": round(sqs + requests + duration, 6),
    }


def measured(args: argparse.Namespace) -> dict[str, Any]:
    if args.source:
        text = sys.stdin.read() if args.source == "-" else Path(args.source).read_text()
    else:
        command = [sys.executable, str(HERE / "pipeline.py"), "--json"]
        text = subprocess.run(
            [*command, "--subscribers", str(args.subscribers)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit("no JSON line from bench/pipeline.py --json")
    result: dict[str, Any] = orjson.loads(lines[-1])
    if "baseline" not in result:
        raise SystemExit("the run has no baseline (was it run with --skip-baseline?)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--from", dest="source", help="bench/pipeline.py --json output, or -")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    result = measured(args)
    devices = result["devices"]
    fanout = bill(result["sqs_usage"], result["lambda"], devices)
    base = result["baseline"]
    baseline = bill(base["sqs_usage"], base["lambda"], devices)

    memory = function_memory_mb()
    print("Prices assumed (AWS list prices, us-east-1, free tiers ignored):")
    print(f"  SQS standard        ${PRICES['sqs_per_million_requests']:.2f} per million requests,")
    print("                      each 64 KB of a request's payload billed as one request")
    print(f"  Lambda requests     ${PRICES['lambda_per_million_requests']:.2f} per million")
    architecture, price = gb_second_price()
    print(
        f"  Lambda duration     ${price:.10f} per GB-second ({architecture}),"
        f" {memory} MB functions (deploy/template.yaml)"
    )
    print()
    print(f"Per million notifications (measured on {devices:,} devices):")
    print(f"  {'':<24}{'fanout':>14}{'baseline':>14}{'baseline/fanout':>18}")
    for key in fanout:
        ratio = f"{baseline[key] / fanout[key]:,.1f}x" if fanout[key] else "-"
        shown = "{:>14,.6f}" if key.endswith("_usd") else "{:>14,}"
        print(f"  {key:<24}{shown.format(fanout[key])}{shown.format(baseline[key])}{ratio:>18}")
    if args.json:
        line = {"devices": devices, "prices": PRICES, "memory_mb": memory}
        print(orjson.dumps({**line, "fanout": fanout, "baseline": baseline}).decode())


if __name__ == "__main__":
    main()
