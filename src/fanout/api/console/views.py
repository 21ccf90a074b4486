"""What each console page shows, read from PostgreSQL (and SQS for the queues page).

The routes (pages.py) only check access and render; the reading and the reasoning
(a device's outcome from its batches and failure rows) are here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from prometheus_client import REGISTRY

from fanout.queue.admin import DeadLetter, QueueDepth, peek_dead_letters, queue_depths
from fanout.queue.messages import (
    DeliveryBatch,
    DeliveryBundle,
    FanoutTask,
    PoisonMessage,
    decode,
    events_of,
)
from fanout.queue.sqs import Queues
from fanout.stages.opens import Opens, event_opens
from fanout.stages.progress import EventStatus, event_status_from_row
from fanout.store import console

LIST_LIMIT = 50
TABLE_LIMIT = 100
# Fractions of the devices sent, for the latency percentiles.
PERCENTILES = (0.5, 0.9, 0.99, 1.0)
# Points on the throughput chart, at most: the bucket widens with the event's duration.
CHART_POINTS = 120
# The per-provider tables' outcome columns (a batch's `outcomes` keys), with their headers:
# one list for the header row and the cells, so neither can gain a column alone.
OUTCOME_COLUMNS = {
    "sent": "Sent",
    "invalid": "Invalid",
    "failed": "Failed",
    "retried": "Retried",
    "held": "Held",
    "skipped": "Skipped",
}
_RATE_LIMITED = re.compile(r": 429\b")


@dataclass(frozen=True)
class EventRow:
    status: EventStatus
    topic: str | None
    user: str | None
    title: str | None
    last_push_at: datetime | None
    kind: str  # "alert" for events stored before kinds existed
    source: str | None = None  # the prefix of the source its audience was read from

    @property
    def audience(self) -> str:
        if self.topic:
            sourced = f" (from source {self.source})" if self.source else ""
            return f"topic {self.topic}{sourced}"
        live = self.status.live_activity
        if live:
            return f"live activity {live.activity_id}"
        # Neither: a tag filter alone, to every user of the app it matches.
        return f"user {self.user}" if self.user else "every user of the app its filter matches"

    @property
    def done(self) -> int:
        s = self.status
        return s.sent + s.failed + s.invalid + s.skipped

    @property
    def publish_to_last_push(self) -> float | None:
        """Seconds from publication to the last batch's recorded outcome."""
        if self.last_push_at is None:
            return None
        return (self.last_push_at - self.status.started_at).total_seconds()


def _event_row(row: asyncpg.Record) -> EventRow:
    return EventRow(
        status=event_status_from_row(row),
        topic=row["topic"],
        user=row["user_external_id"],
        title=row["title"],
        last_push_at=row["last_finished_at"],
        kind=row["kind"],
        source=row["source_prefix"],
    )


async def event_rows(
    pool: asyncpg.Pool,
    *,
    app_id: int,
    topic: str | None,
    status: str | None,
    event_id: int | None = None,
) -> list[EventRow]:
    """The app's newest events; another app's are never among them."""
    rows = await console.list_events(
        pool, app_id=app_id, topic=topic, status=status, event_id=event_id, limit=LIST_LIMIT
    )
    return [_event_row(row) for row in rows]


async def one_event(pool: asyncpg.Pool, event_id: int, *, app_id: int) -> EventRow | None:
    """The app's event; None for another app's, as for one that never was."""
    rows = await event_rows(pool, app_id=app_id, topic=None, status=None, event_id=event_id)
    return rows[0] if rows else None


@dataclass
class EventDetail:
    """Everything of one event that changes while it runs (the page's live part)."""

    event: EventRow
    latency: dict[float, float | None]
    by_platform: dict[str, dict[str, int]]
    reasons: list[asyncpg.Record]
    shards: list[asyncpg.Record]
    batches: console.BatchSummary
    batch_rows: list[asyncpg.Record]
    retired: list[asyncpg.Record]
    opens: Opens


async def event_detail(pool: asyncpg.Pool, event: EventRow) -> EventDetail:
    event_id = event.status.event_id
    by_platform: dict[str, dict[str, int]] = {}
    for row in await console.event_outcomes_by_platform(pool, event_id=event_id):
        by_platform.setdefault(row["platform"], {})[row["outcome"]] = row["devices"]
    return EventDetail(
        event=event,
        latency=await console.event_latency_percentiles(
            pool, event_id=event_id, fractions=PERCENTILES
        ),
        by_platform=by_platform,
        reasons=await console.event_failures_by_reason(pool, event_id=event_id, limit=TABLE_LIMIT),
        shards=await console.event_shards(pool, event_id=event_id, limit=TABLE_LIMIT),
        batches=await console.event_batch_summary(pool, event_id=event_id),
        batch_rows=await console.event_batches(pool, event_id=event_id, limit=TABLE_LIMIT),
        retired=await console.event_device_failures(
            pool, event_id=event_id, outcome="invalid", limit=TABLE_LIMIT
        ),
        opens=await event_opens(pool, event_id=event_id, sent=event.status.sent),
    )


def bucket_seconds(event: EventRow, now: datetime) -> int:
    """The chart's interval: one second, widened so that at most CHART_POINTS fit."""
    end = event.status.finished_at or now
    duration = max(0.0, (end - event.status.started_at).total_seconds())
    return max(1, math.ceil(duration / CHART_POINTS))


async def throughput(pool: asyncpg.Pool, event: EventRow, now: datetime) -> dict[str, Any]:
    """Devices/s per interval since publication, for uPlot: x in seconds, gaps as zero."""
    width = bucket_seconds(event, now)
    rows = await console.event_throughput(
        pool, event_id=event.status.event_id, bucket_seconds=width
    )
    found = {round(row["offset_seconds"] / width): row for row in rows}
    last = max(found, default=-1)
    xs, sent, not_sent = [], [], []
    for index in range(last + 1):
        row = found.get(index)
        xs.append(index * width)
        sent.append(round(row["sent"] / width, 1) if row else 0)
        not_sent.append(round(row["not_sent"] / width, 1) if row else 0)
    return {"bucket_seconds": width, "x": xs, "sent": sent, "not_sent": not_sent}


# ---------------------------------------------------------------------------------------
# "Where is my push?"
# ---------------------------------------------------------------------------------------


@dataclass
class DeviceAnswer:
    device: console.DeviceHistory
    outcome: str  # sent, invalid, failed, skipped, pending, not sent, unknown
    explanation: str
    batch_key: str | None = None
    at: datetime | None = None
    failures: list[asyncpg.Record] = field(default_factory=list)


@dataclass
class WhereAnswer:
    user: console.UserRef
    event: EventRow
    batches: list[asyncpg.Record]
    devices: list[DeviceAnswer]
    no_batch_reason: str | None


async def where_is_my_push(
    pool: asyncpg.Pool,
    event: EventRow,
    *,
    app_id: int,
    user_external_id: str | None,
    device_id: int | None,
) -> WhereAnswer | str:
    """The answer for a user (all their devices) or one device of the app, or why there is
    none (another app's user or device is one there is not)."""
    event_id = event.status.event_id
    if device_id is not None:
        user = await console.device_owner(pool, app_id=app_id, device_id=device_id)
        if user is None:
            return f"no device {device_id}"
    else:
        user = await console.user_by_external_id(
            pool, app_id=app_id, external_id=user_external_id or ""
        )
        if user is None:
            return f"no user with the external id {user_external_id!r}"
    devices = await console.user_device_history(pool, user_id=user.id)
    if device_id is not None:
        devices = [d for d in devices if d.id == device_id]
    ids = [d.id for d in devices]
    batches = await console.batches_carrying(
        pool, event_id=event_id, user_id=user.id, device_ids=ids
    )
    failures = await console.devices_failures(pool, event_id=event_id, device_ids=ids)
    no_batch = None if batches else await _why_no_batch(pool, event, user.id)
    answers = [
        device_answer(device, event, batches, [f for f in failures if f["device_id"] == device.id])
        for device in devices
    ]
    return WhereAnswer(user, event, batches, answers, no_batch)


async def _why_no_batch(pool: asyncpg.Pool, event: EventRow, user_id: int) -> str:
    shard = await console.shard_of_user(pool, event_id=event.status.event_id, user_id=user_id)
    if shard is None:
        if event.status.shards == 0:
            return "the event has not been planned into shards yet"
        return "no shard of this event holds the user: not subscribed when it was planned"
    if shard["status"] in ("pending", "running") and (
        shard["cursor_user_id"] is None or shard["cursor_user_id"] < user_id
    ):
        return f"shard {shard['shard_no']} has not reached this user yet ({shard['status']})"
    if shard["status"] == "failed":
        return f"shard {shard['shard_no']} was given up (see the event's shards)"
    return (
        f"shard {shard['shard_no']} read past this user without a batch: not subscribed "
        "then, no active device then, or held back (see the event's held-back counts)"
    )


def device_answer(
    device: console.DeviceHistory,
    event: EventRow,
    batches: list[asyncpg.Record],
    failures: list[asyncpg.Record],
) -> DeviceAnswer:
    """One device's outcome in the event, from the batches that carried its user and the
    failure rows recorded for it: a device in a done batch without a row was sent to."""
    if failures and failures[-1]["outcome"] not in ("retried", "held"):  # sent again later
        last = failures[-1]
        return DeviceAnswer(
            device,
            last["outcome"],
            last["reason"] or "",
            last["batch_key"],
            last["at"],
            failures,
        )
    if failures:  # retried: the retry batch that names it tells the rest
        retries = [b for b in batches if b["device_ids"] and device.id in b["device_ids"]]
        carrier = retries[-1] if retries else None
        how = f"retried {len(failures)} time(s); "
    else:
        fanned = [b for b in batches if b["device_ids"] is None]
        carrier = next((b for b in fanned if b["status"] == "done"), fanned[0] if fanned else None)
        how = ""
        if carrier is not None:
            outside = _outside_batch(device, event, carrier)
            if outside:
                return DeviceAnswer(device, "not sent", outside, carrier["batch_key"])
    if carrier is None:
        return DeviceAnswer(device, "not sent", "no batch of this event carried it", None)
    key = carrier["batch_key"]
    if carrier["status"] != "done":
        return DeviceAnswer(device, "pending", how + f"its batch is {carrier['status']}", key)
    if not carrier["detailed"]:
        reasons = carrier["failure_reasons"] or {}
        return DeviceAnswer(
            device,
            "unknown",
            how + "its batch was recorded without per-device detail (given up by the "
            f"reconciler, or from before schema 10): {reasons}",
            key,
            carrier["finished_at"],
            failures,
        )
    return DeviceAnswer(
        device,
        "sent",
        how + "its batch is done and recorded no failure for it: the provider accepted it "
        "by the time the batch's outcome was recorded",
        key,
        carrier["finished_at"],
        failures,
    )


def _outside_batch(device: console.DeviceHistory, event: EventRow, batch: asyncpg.Record) -> str:
    """Why a device of the user was not in the batch that carried the user, if it was not."""
    if device.created_at > batch["started_at"]:
        return "registered after its user's batch was read"
    if device.deactivated_at is not None and device.deactivated_at < event.status.started_at:
        return f"inactive before the event was published ({device.deactivated_reason})"
    return ""


# ---------------------------------------------------------------------------------------
# Providers and queues
# ---------------------------------------------------------------------------------------


@dataclass
class ProviderMinute:
    platform: str
    counts: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0  # retried after a 429
    config_errors: int = 0  # failed because fanout's credentials or settings are wrong


async def providers_last_minute(pool: asyncpg.Pool, *, app_id: int) -> list[ProviderMinute]:
    """Per platform, the app's last 60 s from PostgreSQL: devices per outcome of the
    batches recorded, and the 429s and config errors among the failure rows."""
    found: dict[str, ProviderMinute] = {}
    for row in await console.recent_outcomes_by_platform(pool, app_id=app_id, seconds=60):
        minute = found.setdefault(row["platform"], ProviderMinute(row["platform"]))
        minute.counts[row["outcome"]] = row["devices"]
    for row in await console.recent_failures_by_reason(pool, app_id=app_id, seconds=60, limit=1000):
        minute = found.setdefault(row["platform"], ProviderMinute(row["platform"]))
        reason = row["reason"] or ""
        if row["outcome"] == "retried" and _RATE_LIMITED.search(reason):
            minute.rate_limited += row["devices"]
        if " config: " in reason:
            minute.config_errors += row["devices"]
    return [found[name] for name in sorted(found)]


def process_counters() -> list[tuple[str, dict[str, str], float]]:
    """This process's provider counters, and any circuit-breaker or quota metric a build
    registers, as (name, labels, value)."""
    samples = []
    for family in REGISTRY.collect():
        name = family.name
        if not (name.startswith("fanout_provider") or "breaker" in name or "quota" in name):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples.append((sample.name, dict(sample.labels), sample.value))
    return samples


@dataclass(frozen=True)
class DeadLetterView:
    queue: str
    letter: DeadLetter
    summary: str  # what the message was for, never its devices' tokens


def summarise(body: str) -> str:
    try:
        message = decode(body)
    except PoisonMessage as exc:
        return f"undecodable ({len(body)} bytes): {exc}"
    if isinstance(message, DeliveryBundle):
        events = len(events_of(message))
        return f"bundle of {len(message.batches)} delivery batches of {events} events"
    if isinstance(message, FanoutTask) and message.events:
        return f"fan-out of a group of {len(message.events)} events, from {message.event_id}"
    if isinstance(message, FanoutTask):
        part = "plan" if message.shard is None else f"shard {message.shard}"
        return f"fan-out of event {message.event_id} ({part})"
    assert isinstance(message, DeliveryBatch)
    return (
        f"delivery batch {message.key} of event {message.event_id} "
        f"({message.device_count()} devices)"
    )


@dataclass
class QueuesView:
    depths: list[QueueDepth]
    oldest: console.OldestWaiting
    dead_letters: list[DeadLetterView]
    error: str | None = None

    def age(self, since: datetime | None) -> float | None:
        return None if since is None else (self.oldest.now - since).total_seconds()


async def queues_view(
    pool: asyncpg.Pool, queues: Queues, *, app_id: int, limit: int = 20
) -> QueuesView:
    """The deployment's queues (their depths and dead letters), and the app's oldest work
    waiting; shown to keys of the default app only (pages.queues_page)."""
    oldest = await console.oldest_waiting(pool, app_id=app_id)
    depths = await queue_depths(queues)
    letters = []
    for queue in (queues.fanout, queues.delivery):
        for letter in await peek_dead_letters(queue, limit):
            letters.append(DeadLetterView(queue.name, letter, summarise(letter.body)))
    return QueuesView(depths, oldest, letters)


async def dead_letters_of(queues: Queues, event_id: int, limit: int = 50) -> list[DeadLetterView]:
    """Dead letters of one event among the first ``limit`` of each DLQ."""
    found = []
    for queue in (queues.fanout, queues.delivery):
        for letter in await peek_dead_letters(queue, limit):
            try:
                message = decode(letter.body)
            except PoisonMessage:
                continue
            if event_id in events_of(message):
                found.append(DeadLetterView(queue.name, letter, summarise(letter.body)))
    return found
