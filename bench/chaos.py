"""Faults under a running pipeline: does every device still get its push, and once?

    python bench/chaos.py [--devices 100000] [--scenarios pg-fast-fanout,poison] [--json]
                          [--timeout 180] [--stall 120] [--seed 1] [--apps 1] [--direct 0]
                          [--coalesce] [--live-activity]

Every part runs in its own process: a private PostgreSQL (restarted at will), moto's
SQS server (killed at will), a counting sink behind a proxy that can stall, one fan-out
and two delivery workers. Each scenario gets a database cloned from a seeded template,
fresh queues, a fresh sink and fresh workers; it publishes one event to N devices and
inflicts its fault once the system has reached the point the scenario names (read from
the database or the sink, never from the clock), then waits until the event is terminal,
or has settled without being terminal, stalls, or times out. "lost" is the devices the
sink never saw; "duplicates" the pushes it saw again.

With ``--webhooks`` every app has a webhook endpoint (event.finished, devices.retired,
devices.failed) on a receiver in this process, which the workers' webhook senders call
through the fault: at the end, the rows written to the outbox (webhook_deliveries) are
compared with the webhook-ids received; "lost" there is the rows never received.
With ``--direct N``, N more users (one APNs device each, in no topic) get a 1:1 send each,
published as a stream through the API's group commit while the fault strikes (a send that
fails is sent again with its idempotency key until it is acknowledged); each send's data
names its device, and the sink counts a push that reaches another device (``addressed``:
no push carries another event's content; ``--coalesce``: with FANOUT_COALESCE_DIRECT on, the
stream's groups sharing their SQS messages). Reported: the sends lost, duplicated, misaddressed
and not terminal.

With ``--source`` each topic's subscribers are instead an author's followers in an app's own
table (``chaosapp.follows``, indexed), bound to ``author:`` by a source, and the event goes
to ``author:N``: read once at planning into the event's members, through the same faults.
With ``--live-activity`` a Live Activity of the first app holds a push token for each device
of its topic, and each scenario publishes an update to it beside the topic events: the sink
counts the update's pushes per token like an event's per device (lost, duplicates), through
the same faults.
With ``--apps N`` the devices are split over N apps (``chaos-1`` …), each with a topic of
its own, and a scenario publishes an event to each at once; the sink counts each event's
pushes, so lost and duplicates are counted per app. A fault's point is judged over all
the events (mid fan-out: any is; fanned out, terminal: all are).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import random
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from pydantic import SecretStr

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import keyring
from fanout.local.demo import DeviceShape, seed
from fanout.local.faults import (
    TERMINAL_STATUSES,
    EventSnapshot,
    EventWatch,
    poison_bodies,
    schema_has_terminal_states,
)
from fanout.local.postgres_server import PrivatePostgres, ShutdownMode, free_port
from fanout.local.sink import ADDRESSED_TO
from fanout.local.sqs_server import MotoServer
from fanout.local.stalling_proxy import StallingProxy
from fanout.local.workers import WorkerProcess, worker_environment
from fanout.notification import LiveActivity, Notification
from fanout.queue.admin import create_queues
from fanout.queue.sqs import Queues, open_client, open_queues
from fanout.sources import check_source
from fanout.stages.group_commit import Enqueuer, GroupCommit
from fanout.stages.live_activity import publish_update
from fanout.stages.publish import PublishOptions, prepare_event, publish
from fanout.store import apps, connect, create_pool, live_activities, seeding, sources
from fanout.store.lifecycle import FANNING, EventState
from fanout.store.migrate import migrate
from fanout.webhooks.addresses import system_resolver
from fanout.webhooks.endpoints import register

# The workers' settings. Batches of 64 KB (~1,200 devices) rather than 1 MiB, so that
# 100,000 devices make ~85 batches for a fault to land among. Leases (the visibility
# timeout, 60 s), tries (FANOUT_MAX_RECEIVE_COUNT, 5) and retry delays stay at their
# defaults: they decide what a fault costs. With 15 s leases a shard left leased by a
# dead connection was free again before its message's 5 tries (1+2+4+8 s of backoff)
# were used up; with 60 s leases the message is dead-lettered first and the shard never
# finishes: a shorter lease hid the loss.
#
# The reconciler (issue #10) resends work 10 s overdue rather than 120 s: recovery then
# fits the wait below; this decides how long recovery takes, not whether it happens.
WORKER_SETTINGS = {
    "FANOUT_PROVIDER": "sink",
    "FANOUT_BATCH_MAX_BYTES": "65536",
    "FANOUT_RECONCILE_AFTER_SECONDS": "10",
    "FANOUT_POLL_WAIT_SECONDS": "2",  # stops sooner at the end of a scenario
    "FANOUT_SHUTDOWN_GRACE_SECONDS": "5",
}
# Scenarios that strike during fan-out pace it: it pauses while the delivery queue holds
# this many batches, so it lasts as long as delivery (as on a self-hosted queue) rather
# than the fraction of a second 100,000 devices take, and the fault lands mid-shard.
PACED_FANOUT = {"FANOUT_DELIVERY_BACKLOG_LIMIT": "10"}
DELIVERY_WORKERS = 2
# "During delivery": the fan-out has finished and the sink has counted at least this
# share of the devices, and less than DELIVERY_WINDOW[1] (else the window was missed and
# the fault is not inflicted). At 100,000 devices the sink passes 20% while the fan-out
# still runs; waiting for its end keeps the fault on the delivery stage alone.
DELIVERY_WINDOW = (0.2, 0.8)
# The push service stalls: answers come SLOW_ANSWER_SECONDS late for SLOW_FOR_SECONDS,
# then none at all for HANG_SECONDS (the sink provider gives up on a request after 30 s).
SLOW_ANSWER_SECONDS, SLOW_FOR_SECONDS, HANG_SECONDS = 5.0, 10.0, 45.0
WORKER_KILLS = 5
# How long the sink must stay still before an event that is fanned out with every batch
# done counts as settled: the end of a run on a schema without terminal states (before
# issue #10). With them, only a terminal state (or a stall, or the timeout) ends a run.
SETTLE_SECONDS = 3.0
# How long the poison scenario waits, once the event has ended, for every poison message
# to reach a dead-letter queue (5 tries are 1+2+4+8 s of backoff apart).
DEAD_LETTER_WAIT_SECONDS = 60.0
NOTE = Notification(title="New book", body="by an author you follow")


@dataclass(frozen=True)
class Audience:
    """An app's topic in the template database, and how many devices it reaches."""

    app_id: int
    app: str
    topic: str
    devices: int
    activity: str | None = None  # a Live Activity's key: the event is an update to it


@dataclass(frozen=True)
class AllEvents:
    """Several events (one per app) read as one: mid fan-out while any is, fanned out,
    terminal or settled once all are; counts summed. What a fault's point is judged on."""

    snapshots: tuple[EventSnapshot, ...]

    @property
    def status(self) -> str:
        statuses = [s.status for s in self.snapshots]
        return statuses[0] if len(set(statuses)) == 1 else "/".join(statuses)

    @property
    def shards(self) -> int:
        return sum(s.shards for s in self.snapshots)

    @property
    def shards_done(self) -> int:
        return sum(s.shards_done for s in self.snapshots)

    @property
    def batches_sent(self) -> int:
        return sum(s.batches_sent for s in self.snapshots)

    @property
    def terminal(self) -> bool:
        return all(s.status in TERMINAL_STATUSES for s in self.snapshots)

    @property
    def mid_fan_out(self) -> bool:
        return any(s.mid_fan_out for s in self.snapshots)

    @property
    def fanned_out(self) -> bool:
        return all(s.status not in FANNING for s in self.snapshots)

    @property
    def settled(self) -> bool:
        return all(
            s.status == EventState.FANNED_OUT and s.unsettled_batches == 0 for s in self.snapshots
        )

    def progress(self) -> tuple[object, ...]:
        return tuple(s.progress() for s in self.snapshots)


@dataclass
class Seen:
    """One look at the system: the events in the database, the pushes at the sink."""

    state: EventSnapshot | AllEvents | None
    unique: int
    received: int


@dataclass
class Run:
    """One scenario's processes and what they have been through."""

    name: str
    devices: int
    pg: PrivatePostgres
    moto: MotoServer
    settings: Settings
    workers: list[WorkerProcess]
    proxy: StallingProxy
    rng: random.Random
    event_id: int = 0  # the first app's (poison names it)
    event_ids: list[int] = field(default_factory=list)  # one per app
    can_end: bool = False  # the schema has terminal states (issue #10)
    notes: list[str] = field(default_factory=list)

    def share(self, seen: Seen) -> str:
        return f"{seen.unique / self.devices:.0%}"


# --- faults -----------------------------------------------------------------------------


class Fault:
    """Waits for its point (``due``), then is inflicted ``times`` times (``inflict``).

    ``phase`` is where it strikes: "fanout" (mid-shard, with the fan-out paced so that
    there is a middle to strike in), "delivery" (the sink between DELIVERY_WINDOW) or ""
    (never: the clean run).
    """

    phase = ""
    times = 1

    def __init__(self) -> None:
        self.inflicted = 0
        self.missed = ""

    @property
    def paced(self) -> bool:
        return self.phase == "fanout"

    @property
    def pending(self) -> bool:
        return self.inflicted < self.times and not self.missed

    def due(self, run: Run, seen: Seen) -> bool:
        if self.phase == "fanout":
            return seen.state is not None and seen.state.mid_fan_out
        if self.phase == "delivery":
            low, high = (share * run.devices for share in DELIVERY_WINDOW)
            if seen.unique >= high:
                self.missed = f"missed the delivery window (sink at {run.share(seen)})"
                return False
            fanned_out = seen.state is not None and seen.state.fanned_out
            return fanned_out and seen.unique >= low
        return False

    async def inflict(self, run: Run, seen: Seen) -> None:
        raise NotImplementedError

    def summary(self) -> str:
        """What was done, once the run is over ("" if each inflict said it)."""
        return ""

    def where(self, run: Run, seen: Seen) -> str:
        if self.phase == "fanout" and seen.state is not None:
            state = seen.state
            return f"{state.batches_sent} batches out, {state.shards_done}/{state.shards} shards"
        return f"sink at {run.share(seen)}"


class NoFault(Fault):
    pass


class RestartPostgres(Fault):
    def __init__(self, mode: ShutdownMode, phase: str) -> None:
        super().__init__()
        self.mode, self.phase = mode, phase

    async def inflict(self, run: Run, seen: Seen) -> None:
        started = time.monotonic()
        await asyncio.to_thread(run.pg.restart, self.mode)
        took = time.monotonic() - started
        run.notes.append(f"pg_ctl restart -m {self.mode} at {self.where(run, seen)}, {took:.1f}s")


class LoseQueues(Fault):
    """moto killed (every queue and message gone), started again, queues re-created."""

    def __init__(self, phase: str) -> None:
        super().__init__()
        self.phase = phase

    async def inflict(self, run: Run, seen: Seen) -> None:
        started = time.monotonic()
        await asyncio.to_thread(run.moto.kill)
        await asyncio.to_thread(run.moto.start)
        async with open_client(run.settings) as client:
            await create_queues(client, run.settings)
        took = time.monotonic() - started
        run.notes.append(
            f"SQS killed at {self.where(run, seen)}, back with empty queues in {took:.1f}s"
        )


class KillWorkers(Fault):
    """SIGKILL a random worker at random points of delivery, restarting it at once."""

    phase = "fanout"  # paced: the fan-out worker is busy until late, so killing it hurts

    def __init__(self, kills: int) -> None:
        super().__init__()
        self.times = kills
        self.points: list[float] = []
        self.victims: list[str] = []

    def due(self, run: Run, seen: Seen) -> bool:
        if not self.points:  # drawn once, as shares of the devices the sink has seen
            self.points = sorted(run.rng.uniform(0.05, 0.85) for _ in range(self.times))
        return seen.unique >= self.points[self.inflicted] * run.devices

    async def inflict(self, run: Run, seen: Seen) -> None:
        worker = run.rng.choice(run.workers)
        await asyncio.to_thread(worker.kill)
        worker.start()
        label = worker.log_file.stem.removeprefix(f"{run.name}-")
        self.victims.append(f"{label}@{run.share(seen)}")

    def summary(self) -> str:
        return f"SIGKILL and restart: {', '.join(self.victims)}" if self.victims else ""


class StallPushService(Fault):
    phase = "delivery"

    async def inflict(self, run: Run, seen: Seen) -> None:
        run.proxy.answer_after(SLOW_ANSWER_SECONDS, for_seconds=SLOW_FOR_SECONDS)
        run.proxy.hang(for_seconds=HANG_SECONDS, starting_in=SLOW_FOR_SECONDS)
        run.notes.append(
            f"push service answers {SLOW_ANSWER_SECONDS:g}s late for {SLOW_FOR_SECONDS:g}s, "
            f"then hangs {HANG_SECONDS:g}s, from {self.where(run, seen)}"
        )


class Poison(Fault):
    phase = "fanout"
    sent = 0

    async def inflict(self, run: Run, seen: Seen) -> None:
        bodies = poison_bodies(run.event_id)
        async with open_client(run.settings) as client:
            queues = await open_queues(client, run.settings)
            for queue in (queues.fanout, queues.delivery):
                for body in bodies:  # one by one: SQS refuses a batch with one bad entry
                    await queue.send(body)
                    self.sent += 1
        run.notes.append(f"{self.sent} poison messages at {self.where(run, seen)}")

    async def dead_lettered(self, run: Run) -> None:
        """Until every poison message is in a dead-letter queue (or the wait is over)."""
        started = time.monotonic()
        while True:
            counts = await _dead_letters(run.settings)
            elapsed = time.monotonic() - started
            if sum(counts.values()) >= self.sent or elapsed > DEAD_LETTER_WAIT_SECONDS:
                break
            await asyncio.sleep(1.0)
        run.notes.append(
            f"dead-lettered {sum(counts.values())} of {self.sent} {elapsed:.0f}s after the end"
        )


SCENARIOS: dict[str, Callable[[], Fault]] = {
    "clean": NoFault,
    "pg-fast-fanout": lambda: RestartPostgres("fast", "fanout"),
    "pg-fast-delivery": lambda: RestartPostgres("fast", "delivery"),
    "pg-immediate-fanout": lambda: RestartPostgres("immediate", "fanout"),
    "pg-immediate-delivery": lambda: RestartPostgres("immediate", "delivery"),
    "sqs-lost-fanout": lambda: LoseQueues("fanout"),
    "sqs-lost-delivery": lambda: LoseQueues("delivery"),
    "worker-kills": lambda: KillWorkers(WORKER_KILLS),
    "push-hang": StallPushService,
    "poison": Poison,
}


# --- one scenario -----------------------------------------------------------------------


class Watcher:
    """The events' state and the sink's counts; either one away reads as unknown."""

    def __init__(self, dsn: str, sink_url: str, event_ids: list[int]) -> None:
        self.events = [EventWatch(dsn, event_id) for event_id in event_ids]
        self._http = httpx.AsyncClient(base_url=sink_url, timeout=5)
        self.last_unique = self.last_received = 0

    async def look(self) -> Seen:
        state: EventSnapshot | AllEvents | None
        if len(self.events) == 1:
            state = await self.events[0].snapshot()
        else:
            found = [await event.snapshot() for event in self.events]
            state = None if None in found else AllEvents(tuple(s for s in found if s))
        with contextlib.suppress(httpx.HTTPError):
            stats = (await self._http.get("/stats")).json()
            self.last_unique, self.last_received = stats["unique"], stats["received"]
        return Seen(state, self.last_unique, self.last_received)

    async def sink_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self._http.get("/stats")).json()
        return stats

    async def close(self) -> None:
        for event in self.events:
            event.close()
        await self._http.aclose()


class HookCounter:
    """A webhook receiver on loopback counting the webhook-ids it was sent (no signature
    check: tests/integration/test_webhooks.py checks every one)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                webhook_id = self.headers["webhook-id"]
                counter.ids[webhook_id] = counter.ids.get(webhook_id, 0) + 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


WEBHOOK_SETTINGS = {
    "FANOUT_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
    "FANOUT_WEBHOOK_RETRY_BASE_SECONDS": "1",
}


async def _register_hooks(
    settings: Settings, database_url: str, audiences: list[Audience], url: str
) -> None:
    conn = await connect(database_url)
    try:
        for app_id in dict.fromkeys(a.app_id for a in audiences):  # an endpoint per app
            await register(
                conn,
                app_id=app_id,
                url=url,
                kinds=["event.finished", "devices.retired", "devices.failed"],
                keyring=keyring(settings),
                resolver=system_resolver,
                allow_private=True,
            )
    finally:
        await conn.close()


async def _webhooks_judged(
    database_url: str, hooks: HookCounter, wait_seconds: float
) -> dict[str, int]:
    """Once no row is pending (or ``wait_seconds`` on): rows written, received, lost, and
    repeats."""
    conn = await connect(database_url)
    try:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            pending = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
            )
            if pending == 0:
                break
            await asyncio.sleep(0.5)
        written = {
            r["webhook_id"] for r in await conn.fetch("SELECT webhook_id FROM webhook_deliveries")
        }
    finally:
        await conn.close()
    received = set(hooks.ids)
    return {
        "written": len(written),
        "received": len(written & received),
        "lost": len(written - received),
        "repeats": sum(n - 1 for n in hooks.ids.values()),
    }


async def run_scenario(
    name: str,
    pg: PrivatePostgres,
    moto: MotoServer,
    audiences: list[Audience],
    args: argparse.Namespace,
    direct: list[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    fault = SCENARIOS[name]()
    devices = sum(a.devices for a in audiences)
    logs: Path = args.logs
    database = f"chaos_{name.replace('-', '_')}_{secrets.token_hex(2)}"
    await _admin(pg.dsn, f'CREATE DATABASE "{database}" TEMPLATE chaos_template')
    fanout_env = {
        **WORKER_SETTINGS,
        **(PACED_FANOUT if fault.paced else {}),
        "FANOUT_DATABASE_URL": pg.url(database),
        "FANOUT_SQS_ENDPOINT_URL": moto.url,
        "FANOUT_QUEUE_PREFIX": f"chaos-{secrets.token_hex(3)}",
        "FANOUT_SHARD_SIZE": str(max(1000, devices // 4)),
        **({**WEBHOOK_SETTINGS, "FANOUT_SECRET_KEY": generate_key()} if args.webhooks else {}),
        **({"FANOUT_COALESCE_DIRECT": "true"} if args.coalesce else {}),
    }
    settings = Settings(
        **{k.removeprefix("FANOUT_").lower(): v for k, v in fanout_env.items()},
    )
    settings = settings.model_copy(update={"database_url": SecretStr(pg.url(database))})
    async with contextlib.AsyncExitStack() as stack:
        async with open_client(settings) as client:
            await create_queues(client, settings)
        hooks = None
        if args.webhooks:
            hooks = HookCounter()
            stack.callback(hooks.close)
            await _register_hooks(settings, pg.url(database), audiences, hooks.url)
        sink_port = free_port()
        kept = 16 + len(audiences) + len(direct or [])  # every event counted apart
        sink = await asyncio.to_thread(_start_sink, sink_port, logs / f"{name}-sink.log", kept)
        stack.callback(_stop, sink)
        proxy = await stack.enter_async_context(StallingProxy("127.0.0.1", sink_port))
        env = worker_environment({**fanout_env, "FANOUT_SINK_URL": proxy.url})
        roles = ["fanout"] + ["delivery"] * DELIVERY_WORKERS
        workers = [
            WorkerProcess(role, env, logs / f"{name}-{role}-{i}.log")
            for i, role in enumerate(roles)
        ]
        stack.push_async_callback(_stop_workers, workers)
        for worker in workers:
            worker.start()
        for worker in workers:
            await asyncio.to_thread(worker.wait_until_consuming)
        run = Run(name, devices, pg, moto, settings, workers, proxy, random.Random(args.seed))
        conn = await connect(pg.url(database))
        try:
            run.can_end = await schema_has_terminal_states(conn)
        finally:
            await conn.close()
        async with open_client(settings) as client:
            queues = await open_queues(client, settings)
            run.event_ids = await _publish(settings, queues, audiences, args.throttle)
            run.event_id = run.event_ids[0]
        stream = asyncio.create_task(_direct_stream(settings, direct or []))
        started = time.monotonic()
        watcher = Watcher(pg.url(database), f"http://127.0.0.1:{sink_port}", run.event_ids)
        stack.push_async_callback(watcher.close)
        ended, seconds, seen = await _watch(run, fault, watcher, started, args)
        if ended == "terminal":
            await asyncio.sleep(2.0)  # a late duplicate still counts against it
        if isinstance(fault, Poison) and fault.sent:
            await fault.dead_lettered(run)
        direct_ids = await stream
        direct_ended = await _until_ended(pg.url(database), list(direct_ids.values()), args)
        if direct_ids:
            await asyncio.sleep(2.0)  # a late duplicate still counts against them
        stats = await watcher.sink_stats()
        dead_letters = await _dead_letters(settings)
        webhooks = None
        if hooks is not None:  # the workers still run: they send what is left
            webhooks = await _webhooks_judged(pg.url(database), hooks, args.timeout)
    await _admin(pg.dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    run.notes.append(fault.summary())
    if fault.missed and not isinstance(fault, NoFault):
        run.notes.append(f"{fault.inflicted} of {fault.times} inflicted: {fault.missed}")
    if proxy.delayed or proxy.held:
        run.notes.append(f"answers delayed {proxy.delayed}, held {proxy.held}")
    if any(dead_letters.values()) and not isinstance(fault, Poison):
        run.notes.append(f"dead letters {dead_letters}")
    status = seen.state.status if seen.state else "unknown"
    if ended != "terminal":
        status += {
            "settled": " (not terminal)",
            "stalled": f" (stalled {args.stall:g}s)",
            "timeout": " (timeout)",
        }[ended]
    per_app = []
    for audience, event_id in zip(audiences, run.event_ids, strict=True):
        counted = stats["events"].get(str(event_id), {"unique": 0, "duplicates": 0})
        per_app.append(
            {
                "app": audience.app,
                "event_id": event_id,
                "devices": audience.devices,
                "delivered": counted["unique"],
                "duplicates": counted["duplicates"],
                "lost": audience.devices - counted["unique"],
            }
        )
    return {
        "scenario": name,
        "devices": devices,
        # The topic events' own counts (the totals hold the direct sends' pushes too).
        "delivered": sum(a["delivered"] for a in per_app),
        "duplicates": sum(a["duplicates"] for a in per_app),
        "lost": sum(a["lost"] for a in per_app),
        "seconds": None if seconds is None else round(seconds, 1),
        "status": status,
        "ended": ended,
        "fault": "; ".join(note for note in run.notes if note) or "none",
        "dead_letters": dead_letters,
        "event_id": run.event_id,
        **({"throttle_per_minute": args.throttle} if args.throttle else {}),
        **({"apps": per_app} if len(audiences) > 1 else {}),
        **({"webhooks": webhooks} if webhooks is not None else {}),
        **({"direct": _direct_counts(stats, direct_ids, direct_ended)} if direct else {}),
        "env": {k: v for k, v in fanout_env.items() if k in {*PACED_FANOUT, "FANOUT_SHARD_SIZE"}},
    }


async def _watch(
    run: Run, fault: Fault, watcher: Watcher, started: float, args: argparse.Namespace
) -> tuple[str, float | None, Seen]:
    """Poll until the event is terminal, settled, stalled or out of time; inflict the
    fault when it is due. Returns how it ended, the seconds to its end, the last look."""
    inflicting: asyncio.Task[None] | None = None
    last_progress = last_change = started
    progress: tuple[object, ...] = ()
    received = -1
    settled_since: float | None = None
    seen = Seen(None, 0, 0)
    while True:
        looked = await watcher.look()
        now = time.monotonic()
        if looked.state is not None:
            seen = looked
        if looked.received != received:
            received, last_change = looked.received, now
        if looked.state is not None and looked.state.progress() != progress:
            progress, last_progress = looked.state.progress(), now
        if inflicting is not None and inflicting.done():
            inflicting.result()
            inflicting = None
        busy = inflicting is not None
        if not busy and fault.pending and fault.due(run, looked):
            inflicting = asyncio.create_task(fault.inflict(run, looked))
            fault.inflicted += 1
            continue
        state = looked.state
        if state is not None and (state.terminal or state.settled) and fault.pending:
            fault.missed = "the event ended before the fault's point"
        if state is not None and not busy:
            if state.terminal:
                return "terminal", now - started, seen
            if state.settled and not fault.pending and not run.can_end:
                settled_since = settled_since or now
                if now - max(last_change, settled_since) >= SETTLE_SECONDS:
                    return "settled", settled_since - started, seen
            else:
                settled_since = None
        if args.stall and now - max(last_progress, last_change) > args.stall and not busy:
            return "stalled", None, seen
        if now - started > args.timeout:
            return "timeout", None, seen
        await asyncio.sleep(0.05 if fault.pending else 0.2)


# --- processes and plumbing -------------------------------------------------------------


def _start_sink(port: int, log: Path, events_kept: int = 16) -> Any:
    import subprocess

    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "fanout", "sink", "--port", str(port)),
                *("--events-kept", str(events_kept)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code == 200:
                return process
        if process.poll() is not None:
            raise SystemExit(f"the sink exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the sink did not answer within 30s")


def _stop(process: Any) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except Exception:
        process.kill()


async def _stop_workers(workers: list[WorkerProcess]) -> None:
    await asyncio.gather(*(asyncio.to_thread(w.stop, 10.0) for w in workers))


async def _publish(
    settings: Settings, queues: Queues, audiences: list[Audience], throttle: int | None = None
) -> list[int]:
    """An event to each app's topic, published together (paced at ``throttle`` devices a
    minute, if given); their ids."""
    options = PublishOptions(throttle_per_minute=throttle)
    pool = await create_pool(settings, min_size=1, max_size=len(audiences))

    async def one(audience: Audience) -> int:
        if audience.activity is not None:
            done = await publish_update(
                pool, queues, LIVE_NOTE, activity_key=audience.activity, app_id=audience.app_id
            )
            return int(done.published.event_id)
        published = await publish(
            pool, queues, NOTE, app_id=audience.app_id, topic=audience.topic, options=options
        )
        return int(published.event_id)

    try:
        return list(await asyncio.gather(*(one(a) for a in audiences)))
    finally:
        await pool.close()


async def _direct_stream(settings: Settings, targets: list[tuple[str, int]]) -> dict[str, int]:
    """A 1:1 send to each (user, device), ten at a time, through the API's group commit;
    each sent again (its idempotency key) until acknowledged. User -> event id."""
    if not targets:
        return {}
    acknowledged: dict[str, int] = {}
    pool = await create_pool(settings, min_size=1, max_size=4)
    async with open_client(settings) as client:
        opened: Queues | None = None

        async def queues() -> Queues:
            nonlocal opened
            if opened is None:
                opened = await open_queues(client, settings)
            return opened

        group = GroupCommit(
            pool,
            Enqueuer(
                pool,
                queues,
                overdue_after=settings.reconcile_after_seconds,
                timeout=2,
                coalesce=settings.coalesce_direct,
                coalesce_window=settings.coalesce_window_seconds,
            ),
            overdue_after=settings.reconcile_after_seconds,
        )
        pending = iter(targets)

        async def sender() -> None:
            for user, device in pending:
                note = Notification(title=f"for {user}", data={ADDRESSED_TO: str(device)})
                event = prepare_event(note, user=user, idempotency_key=f"chaos-{user}")
                while True:
                    try:
                        acknowledged[user] = (await group.publish(event)).event_id
                        break
                    except Exception:  # the fault: send it again, as a client would
                        await asyncio.sleep(0.5)

        try:
            await asyncio.gather(*(sender() for _ in range(10)))
        finally:
            await group.close(grace=10)
            await pool.close()
    return acknowledged


async def _until_ended(dsn: str, event_ids: list[int], args: argparse.Namespace) -> int:
    """Until the events have ended (or ``--timeout``); how many have."""
    if not event_ids:
        return 0
    deadline = time.monotonic() + args.timeout
    ended = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await connect(dsn)
            try:
                ended = await conn.fetchval(
                    "SELECT count(*) FROM events WHERE id = ANY($1::bigint[]) "
                    "AND status = ANY($2::text[])",
                    event_ids,
                    list(TERMINAL_STATUSES),
                )
            finally:
                await conn.close()
            if ended == len(event_ids):
                break
        await asyncio.sleep(0.5)
    return int(ended)


def _direct_counts(stats: dict[str, Any], ids: dict[str, int], ended: int) -> dict[str, int]:
    counted = [stats["events"].get(str(event_id), {}) for event_id in ids.values()]
    return {
        "sends": len(ids),
        "delivered": sum(1 for c in counted if c.get("unique", 0) == 1),
        "lost": sum(1 for c in counted if c.get("unique", 0) == 0),
        "duplicates": sum(c.get("duplicates", 0) for c in counted),
        "addressed_checked": stats["addressed"]["checked"],
        "misaddressed": stats["addressed"]["wrong"],
        "not_terminal": len(ids) - ended,
    }


async def _dead_letters(settings: Settings) -> dict[str, int]:
    """Messages in each dead-letter queue at the end (visible ones, as SQS counts)."""
    counts = {}
    with contextlib.suppress(Exception):
        async with open_client(settings) as client:
            queues = await open_queues(client, settings)
            for role, queue in (("fanout", queues.fanout), ("delivery", queues.delivery)):
                if queue.dead_letter_url is not None:
                    attrs = await client.get_queue_attributes(
                        QueueUrl=queue.dead_letter_url,
                        AttributeNames=["ApproximateNumberOfMessages"],
                    )
                    counts[role] = int(attrs["Attributes"]["ApproximateNumberOfMessages"])
    return counts


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def seed_direct(conn: asyncpg.Connection, count: int) -> list[tuple[str, int]]:
    """``count`` users of the default app in no topic, one APNs device each: (user, device)."""
    if not count:
        return []
    shape = DeviceShape(platforms=("apns",))
    users = await seeding.seed_users(
        conn, app_id=apps.DEFAULT_APP_ID, prefix="direct-", count=count
    )
    await seeding.seed_devices(
        conn,
        first_user_id=users.first_id,
        last_user_id=users.last_id,
        per_user=1,
        token_seed="direct",
        webpush_endpoint_base="https://push.example.net/wp/",
        web_push_p256dh=shape.p256dh,
        web_push_auth=shape.auth,
        platforms=shape.platforms,
    )
    rows = await conn.fetch(
        """SELECT u.external_id, d.id FROM users u JOIN devices d ON d.user_id = u.id
           WHERE u.id BETWEEN $1 AND $2 ORDER BY u.id""",
        users.first_id,
        users.last_id,
    )
    return [(row["external_id"], row["id"]) for row in rows]


async def prepare_template(
    pg: PrivatePostgres,
    devices: int,
    app_count: int,
    *,
    sourced: bool = False,
    live_activity: bool = False,
) -> list[Audience]:
    """A migrated database with topics of ``devices`` subscribers in all, one APNs device
    each, for every scenario to clone: one topic of the default app, or with ``app_count``
    above 1, one in each of as many apps (``chaos-1`` …), the devices split evenly. With
    ``sourced``, each topic's subscribers become the followers of an author in an app's own
    table, and the event goes to that author's topic, read through a source."""
    await _admin(pg.dsn, "CREATE DATABASE chaos_template")
    conn = await connect(pg.url("chaos_template"))
    shape = DeviceShape(platforms=("apns",))
    try:
        await migrate(conn)
        if app_count == 1:
            seeded = await seed(conn, devices, 1, shape)
            audiences = [
                Audience(apps.DEFAULT_APP_ID, apps.DEFAULT_APP, seeded.topic, seeded.devices)
            ]
        else:
            audiences = []
            for i in range(app_count):
                key = f"chaos-{i + 1}"
                app = await apps.insert_app(conn, key=key, name=key, settings={})
                assert app is not None
                share = devices // app_count + (i < devices % app_count)
                seeded = await seed(conn, share, 1, shape, app=key)
                audiences.append(Audience(app.id, key, seeded.topic, seeded.devices))
        activity = await _live_activity(conn, audiences[0]) if live_activity else None
        if sourced:
            audiences = [await _follow_table(conn, a, n) for n, a in enumerate(audiences, 1)]
        return audiences + ([activity] if activity else [])
    finally:
        await conn.close()


# --live-activity: an update to an activity whose tokens are the first topic's devices' own.
LIVE_NOTE = Notification(
    kind="liveactivity",
    priority="normal",
    live_activity=LiveActivity(event="update", content_state={"minute": 90}),
)


async def _live_activity(conn: asyncpg.Connection, audience: Audience) -> Audience:
    key = "chaos-match"
    activity_id = await live_activities.find_or_create_activity(
        conn, app_id=audience.app_id, activity_key=key
    )
    topic_id = await conn.fetchval(
        "SELECT id FROM topics WHERE app_id = $1 AND key = $2", audience.app_id, audience.topic
    )
    tokens = await seeding.seed_live_activity_tokens(
        conn, activity_id=activity_id, topic_id=topic_id
    )
    await conn.execute("ANALYZE")
    return Audience(audience.app_id, f"{audience.app} live activity", key, tokens, key)


# --source: an app's own follow table (indexed by author, as an app would have it) and a
# source over it; author n is followed by the n-th audience's subscribers.
FOLLOWERS = "SELECT follower_id AS user_id FROM chaosapp.follows WHERE author_id = :key::bigint"


async def _follow_table(conn: asyncpg.Connection, audience: Audience, author: int) -> Audience:
    await conn.execute(
        """CREATE SCHEMA IF NOT EXISTS chaosapp;
           CREATE TABLE IF NOT EXISTS chaosapp.follows (
               author_id bigint NOT NULL, follower_id text NOT NULL);
           CREATE INDEX IF NOT EXISTS follows_by_author ON chaosapp.follows (author_id);
           GRANT USAGE ON SCHEMA chaosapp TO fanout_source;
           GRANT SELECT ON chaosapp.follows TO fanout_source;"""
    )
    await conn.execute(
        """INSERT INTO chaosapp.follows (author_id, follower_id)
           SELECT $3, u.external_id
           FROM subscriptions AS s JOIN topics AS t ON t.id = s.topic_id
           JOIN users AS u ON u.id = s.user_id
           WHERE t.app_id = $1 AND t.key = $2""",
        audience.app_id,
        audience.topic,
        author,
    )
    await conn.execute("ANALYZE chaosapp.follows")
    query = await check_source(
        conn,
        query=FOLLOWERS,
        user_column="user_id",
        sample_key=str(author),
        time_limit=30,
        role="fanout_source",
    )
    await sources.put_source(
        conn, app_id=audience.app_id, prefix="author:", query=query, user_column="user_id"
    )
    return Audience(audience.app_id, audience.app, f"author:{author}", audience.devices)


# --- output -----------------------------------------------------------------------------

COLUMNS = ("scenario", "devices", "delivered", "duplicates", "lost", "seconds", "status")


def print_row(result: dict[str, Any] | None) -> None:
    if result is None:
        print(f"{COLUMNS[0]:<22}{''.join(f'{c:>11}' for c in COLUMNS[1:6])}  {COLUMNS[6]}")
        return
    seconds = result["seconds"] if result["seconds"] is not None else result["ended"]
    numbers = [result[c] for c in COLUMNS[1:5]]
    print(
        f"{result['scenario']:<22}{''.join(f'{n:>11,}' for n in numbers)}{seconds:>11}"
        f"  {result['status']}",
        flush=True,
    )
    print(f"{'':<22}  fault: {result['fault']}", flush=True)
    if "webhooks" in result:
        hooks = result["webhooks"]
        print(
            f"{'':<22}  webhooks: {hooks['received']:,} of {hooks['written']:,} rows received, "
            f"{hooks['lost']:,} lost, {hooks['repeats']:,} repeats (same webhook-id)",
            flush=True,
        )
    if direct := result.get("direct"):
        print(
            f"{'':<22}  direct: {direct['delivered']:,} of {direct['sends']:,} 1:1 sends "
            f"delivered, {direct['lost']:,} lost, {direct['duplicates']:,} duplicates, "
            f"{direct['misaddressed']:,} misaddressed of {direct['addressed_checked']:,} "
            f"checked, {direct['not_terminal']:,} not terminal",
            flush=True,
        )
    for app in result.get("apps", []):
        print(
            f"{'':<22}  {app['app']}: {app['delivered']:,} of {app['devices']:,} delivered, "
            f"{app['duplicates']:,} duplicates, {app['lost']:,} lost",
            flush=True,
        )


async def main_async(args: argparse.Namespace) -> None:
    if args.apps < 1 or args.apps > args.devices:
        raise SystemExit(f"--apps must be from 1 to --devices ({args.devices}), not {args.apps}")
    names = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    args.logs = Path(tempfile.mkdtemp(prefix="fanout-chaos-"))
    with PrivatePostgres() as pg, MotoServer(log_file=args.logs / "moto.log") as moto:
        audiences = await prepare_template(
            pg, args.devices, args.apps, sourced=args.source, live_activity=args.live_activity
        )
        conn = await connect(pg.url("chaos_template"))
        try:
            direct = await seed_direct(conn, args.direct)
        finally:
            await conn.close()
        devices = sum(a.devices for a in audiences)
        shown = {
            **WORKER_SETTINGS,
            "FANOUT_DATABASE_URL": f"<private PostgreSQL, 127.0.0.1:{pg.port}, a database each>",
            "FANOUT_SQS_ENDPOINT_URL": moto.url,
            "FANOUT_SINK_URL": "<stalling proxy> -> fanout sink (fresh each scenario)",
            "FANOUT_SHARD_SIZE": str(max(1000, devices // 4)),
        }
        app_count = len({a.app_id for a in audiences})
        over = f" over {app_count} apps, an event each" if app_count > 1 else ""
        if args.live_activity:
            over += f", and a Live Activity update to {audiences[-1].devices:,} tokens"
        print(f"chaos: {devices:,} devices{over}, 1 fan-out + {DELIVERY_WORKERS} delivery workers")
        for key, value in shown.items():
            print(f"  {key}={value}")
        print(f"  + {PACED_FANOUT} where the fault strikes during fan-out; logs in {args.logs}")
        print_row(None)
        results = []
        for name in names:
            result = await run_scenario(name, pg, moto, audiences, args, direct)
            results.append(result)
            print_row(result)
    if args.json:
        for result in results:
            print(orjson.dumps(result).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--scenarios", help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds to wait for an event's end"
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=120,
        help="give up on an event after this many seconds without progress (0: never); "
        "longer than a lease (60 s), which is what recovery may wait for",
    )
    parser.add_argument("--seed", type=int, default=1, help="for the worker kills")
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="an endpoint per app; count the outbox's rows received (lost: never received)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    parser.add_argument(
        "--apps", type=int, default=1, help="split the devices over this many apps, an event each"
    )
    parser.add_argument(
        "--throttle",
        type=int,
        default=None,
        help="pace the events at N devices a minute (throttle_per_minute): the faults then "
        "land on a schedule kept in PostgreSQL",
    )
    parser.add_argument(
        "--direct", type=int, default=0, help="users sent a 1:1 send each, as a stream, too"
    )
    parser.add_argument(
        "--live-activity",
        action="store_true",
        help="an update to a Live Activity holding a token for each device of the first "
        "topic, published beside the topic events (issue #23)",
    )
    parser.add_argument(
        "--source",
        action="store_true",
        help="the audience as an app's own follow table behind a source (issue #25): each "
        "event goes to an author's topic, read from the table at planning",
    )
    parser.add_argument(
        "--coalesce",
        action="store_true",
        help="FANOUT_COALESCE_DIRECT on: the direct stream's groups share their SQS messages",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
