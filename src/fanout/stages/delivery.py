"""The delivery stage: one batch in, a push to each of its devices out.

It reads nothing per recipient from the database: everything it needs is in the
batch. Per batch it runs a few statements: claim the batch in the invocation's name (a
redelivered batch that is done, or held by a live invocation, is skipped; see
``stages.leases``), then, in one transaction,
deactivate the dead tokens, record the retry batch and the outcome; then end the event
if that was its last open batch. Devices that may succeed later go back on the queue
as a smaller batch with a delay, recorded first so that the reconciler can send it
again if its message is lost; devices already sent never do.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pydantic

from fanout import metrics, retry
from fanout.config import Settings
from fanout.metrics import AUDIENCE_HELD_BACK, app_label
from fanout.notification import Notification, RenderedNotification, render
from fanout.providers import Outcome, OutcomeKind, Provider
from fanout.providers.apps import providers_of
from fanout.queue.messages import DeliveryBatch, Device, PoisonMessage
from fanout.queue.sqs import MAX_DELAY_SECONDS, Queues
from fanout.stages import leases
from fanout.stages.batching import shard_of_key
from fanout.stages.device_outcomes import BatchDetail, batch_detail
from fanout.stages.holding import HeldBatch, Hold, held_batch, record_held
from fanout.stages.shard_filter import page_filter_of
from fanout.store import (
    UNTRUSTWORTHY,
    acquire,
    apps,
    batches,
    console,
    events,
    lifecycle,
    live_activities,
    recipients,
    shards,
    sources,
    webhooks,
)
from fanout.store.devices import deactivate_devices
from fanout.webhooks.payloads import device_reports

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchReport:
    event_id: int
    key: str
    devices: int = 0
    sent: int = 0
    failed: int = 0
    invalid: int = 0
    skipped: int = 0
    retried: int = 0
    held: int = 0  # not sent: their credential's breaker is open; sent again after a cool-down
    already_done: bool = False
    busy: bool = False  # another invocation holds it: this copy of the message is redundant
    lease_left: float = 0.0  # when busy: seconds until the holder's lease ends
    failure_reasons: dict[str, int] = field(default_factory=dict)
    # Not sent: cancelled, expired; superseded (a newer update of its Live Activity is out).
    held_back: dict[str, int] = field(default_factory=dict)


async def deliver_batch(
    batch: DeliveryBatch,
    pool: asyncpg.Pool,
    queues: Queues,
    providers: Mapping[str, Provider],
    settings: Settings,
) -> BatchReport:
    """Send one batch, record its outcome; a batch already done or held elsewhere is
    skipped (PostgreSQL knows it, and the reconciler sees that it finishes)."""
    report = BatchReport(batch.event_id, batch.key, devices=batch.device_count())
    lease = settings.visibility_timeout
    owner = leases.new_owner()
    releaser = _releaser(batch, pool, owner, settings)
    try:
        claimed, lease_left, app_id = await leases.claim(
            lambda: _claim(batch, pool, owner, report.devices, lease, settings),
            f"claiming batch {batch.key}",
        )
    except BaseException as failure:
        # The claim may have committed unanswered: what this owner may hold is given up.
        # Whether it did is not known, so nothing says to wait the lease out (0 s).
        await leases.give_up(releaser, failure, 0)
    if claimed in (
        lifecycle.EventState.CANCELLED,
        lifecycle.EventState.EXPIRED,
        events.SUPERSEDED_REASON,
    ):
        try:
            await finish_unsent(batch, pool, owner, claimed, report, app_id)
        except leases.LeaseLost as refused:
            return _lease_lost(report, refused, lease)
        return report
    if claimed != "claimed":
        report.already_done, report.busy = claimed == "done", claimed == "busy"
        report.lease_left = lease_left
        return report
    try:
        notification = notification_of(batch)
        if batch.rereads:
            await _reread_devices(batch, pool, settings)
            report.devices = batch.device_count()
        devices = list(batch.iter_devices())
    except BaseException as failure:  # nothing was sent: let the next try have it at once
        await leases.give_up(releaser, failure, lease)
    try:
        # The event's app's providers (its credentials), held until the sends are done.
        async with providers_of(providers, pool, app_id) as app_providers:
            outcomes = await _send_while_held(
                _send_all(
                    notification, str(batch.event_id), devices, app_providers, batch.published_at
                ),
                batch,
                pool,
                owner,
                settings,
            )
    except leases.LeaseLost as refused:
        return _lease_lost(report, refused, lease)
    except BaseException as failure:
        # Stopped mid-send (a worker's grace ran out): the next copy may go on at once.
        # Devices sent already get it again, with the same collapse key.
        await leases.give_up(releaser, failure, lease)

    judged = judge(batch, devices, outcomes, report, settings)
    try:
        await _record_outcome(pool, batch, owner, report, judged, settings, app_id=app_id)
    except leases.LeaseLost as refused:  # the holder records the outcome and its retries
        return _lease_lost(report, refused, lease)
    await send_retries(queues, judged, report)
    return report


@dataclass(slots=True)
class Judged:
    """What follows from a sent batch's outcomes (its report counts them): the dead tokens
    to retire, the retry batch and its delay, the devices a breaker held, the devices not
    sent to (for the console) and the webhooks reporting them."""

    batch: DeliveryBatch
    invalid_ids: list[int]
    retry_batch: tuple[DeliveryBatch, int] | None
    held: HeldBatch | None
    detail: BatchDetail
    webhook_reports: list[tuple[str, dict[str, Any]]]

    @property
    def ends_event(self) -> bool:
        """Whether nothing of the batch is left to send (no retry, nothing held): its event
        may end once it is recorded."""
        return self.retry_batch is None and self.held is None


def judge(
    batch: DeliveryBatch,
    devices: Sequence[Device],
    outcomes: Sequence[Outcome | None],
    report: BatchReport,
    settings: Settings,
) -> Judged:
    """Count the batch's outcomes in ``report`` and decide what follows (``Judged``)."""
    what_next = _sort_outcomes(devices, outcomes, report)
    retry_batch: tuple[DeliveryBatch, int] | None = None
    if what_next.to_retry:
        if batch.attempt + 1 < settings.delivery_max_attempts:
            retry_batch = _retry_batch(batch, what_next.to_retry, what_next.retry_after, settings)
            report.retried = len(what_next.to_retry)
        else:
            report.failed += len(what_next.to_retry)
            for outcome in outcomes:  # by the last try's reason, as each device's detail
                if outcome is not None and outcome.kind is OutcomeKind.RETRY:
                    why = f"retries exhausted; last: {outcome.reason}"
                    report.failure_reasons[why] = report.failure_reasons.get(why, 0) + 1
    held = _hold_back(batch, what_next.hold, report, settings)
    # Per device, only what went wrong (for the console's "Where is my push?").
    detail = batch_detail(devices, outcomes, retrying=retry_batch is not None)
    # The webhooks about its devices (retired tokens, failures), written with the outcome.
    reports = device_reports(
        devices,
        detail,
        event_id=batch.event_id,
        batch_key=batch.key,
        live_activity=is_live_activity(batch),
    )
    return Judged(batch, what_next.invalid_ids, retry_batch, held, detail, reports)


async def record_consequences(
    conn: asyncpg.Connection, judged: Judged, settings: Settings, *, app_id: int
) -> None:
    """In the caller's transaction, beside the batch's outcome: retire its dead tokens,
    record its retry batch and its held batch, and the webhooks about its devices."""
    batch, invalid_ids = judged.batch, judged.invalid_ids
    if invalid_ids and is_live_activity(batch):  # its devices are tokens
        await live_activities.retire_tokens(conn, token_ids=invalid_ids, reason="invalid token")
    elif invalid_ids:
        await deactivate_devices(conn, device_ids=invalid_ids, reason="invalid token")
    if judged.retry_batch is not None:
        retry, delay = judged.retry_batch
        await batches.record_retry_batch(
            conn,
            event_id=retry.event_id,
            batch_key=retry.key,
            attempt=retry.attempt,
            device_ids=[device.id for device in retry.iter_devices()],
            delay_seconds=delay,
            overdue_after=settings.reconcile_after_seconds,
        )
    if judged.held is not None:
        await record_held(conn, judged.held, settings)
    for kind, payload in judged.webhook_reports:
        await webhooks.enqueue(conn, app_id=app_id, kind=kind, payload=payload)


def has_consequences(judged: Judged) -> bool:
    """Whether ``record_consequences`` has anything to write."""
    return bool(
        judged.invalid_ids
        or judged.retry_batch is not None
        or judged.held is not None
        or judged.webhook_reports
    )


async def send_retries(queues: Queues, judged: Judged, report: BatchReport) -> None:
    """Once the outcome is recorded: send the retry batch and the held batch (if SQS
    refuses, the reconciler sends them once due); log the failures."""
    if judged.retry_batch is not None:
        await _send_retry(queues, *judged.retry_batch)
    if judged.held is not None:
        await _send_retry(queues, judged.held.batch, judged.held.delay)
    if report.failure_reasons:
        log.warning("batch %s: failures %s", judged.batch.key, report.failure_reasons)


_CONNECTION_ERRORS = UNTRUSTWORTHY


def _lease_lost(report: BatchReport, refused: leases.LeaseLost, lease: int) -> BatchReport:
    """This invocation stalled past its lease (a pause, a partition) and another took the
    batch: it records nothing and sends no more (the devices it sent get the push again
    from the holder, with the same collapse key); its copy of the message is redundant."""
    log.warning("%s; stopped", refused)
    report.busy, report.lease_left = True, float(lease)
    return report


@dataclass(slots=True)
class _WhatNext:
    """A sent batch's devices by what happens to them next (those sent or skipped are
    only counted in the report)."""

    invalid_ids: list[int] = field(default_factory=list)  # dead tokens: deactivate
    to_retry: list[Device] = field(default_factory=list)  # may succeed later
    retry_after: float = 0.0  # the longest Retry-After among them
    hold: Hold = field(default_factory=Hold)  # held by an open breaker


def _sort_outcomes(
    devices: Sequence[Device], outcomes: Sequence[Outcome | None], report: BatchReport
) -> _WhatNext:
    what_next = _WhatNext()
    for device, outcome in zip(devices, outcomes, strict=True):
        if outcome is None:
            report.skipped += 1
        elif outcome.kind is OutcomeKind.OK:
            report.sent += 1
        elif outcome.kind is OutcomeKind.HELD:
            what_next.hold.add(device, outcome)
        elif outcome.kind is OutcomeKind.INVALID_TOKEN:
            what_next.invalid_ids.append(device.id)
        elif outcome.kind is OutcomeKind.RETRY:
            what_next.to_retry.append(device)
            what_next.retry_after = max(what_next.retry_after, outcome.retry_after or 0.0)
        else:
            report.failed += 1
            _count_reason(report, outcome)
    report.invalid = len(what_next.invalid_ids)
    return what_next


_RETRY_SUFFIX = re.compile(r"/r\d+$")


def _hold_back(
    batch: DeliveryBatch, hold: Hold, report: BatchReport, settings: Settings
) -> HeldBatch | None:
    """The batch sending the devices an open breaker held back again after its cool-down
    (they stay pending, never failed); once held too often, they count failed."""
    if not hold.devices:
        return None
    held, given_up = held_batch(batch, hold, settings)
    if held is not None:
        report.held = len(hold.devices)
    for reason, devices in given_up.items():
        report.failed += devices
        report.failure_reasons[reason] = report.failure_reasons.get(reason, 0) + devices
    return held


async def _record_outcome(
    pool: asyncpg.Pool,
    batch: DeliveryBatch,
    owner: UUID,
    report: BatchReport,
    judged: Judged,
    settings: Settings,
    *,
    app_id: int = 0,
) -> None:
    """Deactivate dead tokens, record the retry batch (and the batch of devices held back
    by a breaker), the devices not sent to, the webhooks reporting them (the outbox), and
    mark this one done, in one transaction; then, if that was the event's last open batch,
    end the event.

    The pushes are out by now: if recording fails, SQS would deliver the batch again and
    every device would get it twice. A database blip is worth waiting out instead. Raises
    ``LeaseLost`` (and records nothing) if ``owner`` no longer holds the batch.
    """
    detail = judged.detail

    async def record() -> None:
        async with acquire(pool) as conn:
            async with conn.transaction():
                await record_consequences(conn, judged, settings, app_id=app_id)
                await console.record_batch_detail(
                    conn,
                    event_id=batch.event_id,
                    batch_key=batch.key,
                    by_platform=detail.by_platform,
                    device_ids=detail.device_ids,
                    platforms=detail.platforms,
                    kinds=detail.kinds,
                    reasons=detail.reasons,
                )
                finished = await batches.finish_batch(
                    conn,
                    event_id=batch.event_id,
                    batch_key=batch.key,
                    sent=report.sent,
                    failed=report.failed,
                    invalid=report.invalid,
                    skipped=report.skipped,
                    retried=report.retried,
                    failure_reasons=report.failure_reasons or None,
                    owner=owner,
                )
                if not finished:  # rolls the transaction back
                    raise leases.lost("batch", batch.key)
            if judged.ends_event:
                await lifecycle.finish(conn, event_id=batch.event_id)

    await retry.retrying(
        record,
        backoff=retry.RECORD_OUTCOME,
        tries=retry.RECORD_OUTCOME_TRIES,
        on=_CONNECTION_ERRORS,
        what=f"recording sent batch {batch.key}",
    )


async def finish_unsent(
    batch: DeliveryBatch,
    pool: asyncpg.Pool,
    owner: UUID,
    reason: str,
    report: BatchReport,
    app_id: int | None,
) -> None:
    """The event was cancelled or expired while the batch waited (or, a Live Activity
    update, a newer one of its activity was published: superseded): it is done, nothing
    sent, its devices counted held back for ``reason``; the event may have ended."""
    async with acquire(pool) as conn:
        devices = await batches.finish_batch_held(
            conn, event_id=batch.event_id, batch_key=batch.key, owner=owner, reason=reason
        )
        if devices is None:  # taken by another invocation since the claim: it finishes it
            raise leases.lost("batch", batch.key)
        await lifecycle.finish(conn, event_id=batch.event_id)
        # Rare (a cancelled, expired or superseded event's batch): one look-up for the label.
        app = await apps.app_key(conn, app_id=app_id) if app_id is not None else None
    report.held_back[reason] = devices
    AUDIENCE_HELD_BACK.labels(reason, app_label(app)).inc(devices)
    log.info("batch %s: not sent, its event is %s (%d devices)", batch.key, reason, devices)


def _releaser(
    batch: DeliveryBatch, pool: asyncpg.Pool, owner: UUID, settings: Settings
) -> Callable[[str], Awaitable[object]]:
    async def release(reason: str) -> None:
        async with acquire(pool) as conn:
            await batches.release_batch(
                conn,
                event_id=batch.event_id,
                batch_key=batch.key,
                owner=owner,
                overdue_after=settings.reconcile_after_seconds,
                reason=reason,
            )

    return release


async def _send_while_held(
    sending: Awaitable[list[Outcome | None]],
    batch: DeliveryBatch,
    pool: asyncpg.Pool,
    owner: UUID,
    settings: Settings,
) -> list[Outcome | None]:
    """The outcomes of ``sending``, the batch's lease renewed meanwhile. Raises
    ``LeaseLost`` if a renewal was refused (the lease lapsed and another invocation took
    the batch): the send is stopped there, so this stale invocation sends no more."""
    return await leases.while_renewing(sending, _keep_lease(batch, pool, owner, settings))


async def _keep_lease(
    batch: DeliveryBatch, pool: asyncpg.Pool, owner: UUID, settings: Settings
) -> None:
    """Renew ``owner``'s lease on the batch while it sends, so a slow provider never lets
    a redelivered copy of it start sending too; raise ``LeaseLost`` when one is refused."""
    lease = settings.visibility_timeout
    while True:
        await asyncio.sleep(max(1.0, lease / 3))
        try:
            async with acquire(pool) as conn:
                renewed = await batches.renew_batch_lease(
                    conn,
                    event_id=batch.event_id,
                    batch_key=batch.key,
                    owner=owner,
                    lease_seconds=lease,
                    overdue_after=settings.reconcile_after_seconds,
                )
        except _CONNECTION_ERRORS as exc:
            log.warning("could not renew the lease of batch %s: %r", batch.key, exc)
            continue
        if not renewed:
            raise leases.lost("batch", batch.key)


async def _claim(
    batch: DeliveryBatch,
    pool: asyncpg.Pool,
    owner: UUID,
    devices: int,
    lease: int,
    settings: Settings,
) -> tuple[str, float, int]:
    """("claimed", 0, app) if this invocation (``owner``) delivers the batch (of the
    event's app), ("cancelled" | "expired" | "superseded", 0, app) if it holds it but its
    event stopped; else "done", or
    "busy" with the seconds left on the holder's lease."""
    async with acquire(pool) as conn:
        try:
            claimed = await batches.claim_batch(
                conn,
                event_id=batch.event_id,
                batch_key=batch.key,
                attempt=batch.attempt,
                devices=devices,
                owner=owner,
                lease_seconds=lease,
                overdue_after=settings.reconcile_after_seconds,
            )
        except asyncpg.ForeignKeyViolationError:
            raise PoisonMessage(f"batch {batch.key}: unknown event {batch.event_id}") from None
        if claimed is not None:
            return claimed.stopped or "claimed", 0.0, claimed.app_id
        held = await batches.batch_status(conn, event_id=batch.event_id, batch_key=batch.key)
    assert held is not None  # the claim found the row, or would have inserted it
    if held.status == "done":
        return "done", 0.0, 0
    # Held by another invocation: a redundant copy while the holder lives (a redelivery, a
    # resend by the reconciler), and wanted once its lease is over if the holder died.
    log.info("batch %s of event %d is being delivered elsewhere", batch.key, batch.event_id)
    return "busy", held.lease_left, 0


def is_live_activity(batch: DeliveryBatch) -> bool:
    """A Live Activity update's batch: its devices are live_activity_tokens, not devices."""
    return batch.notification.get("kind") == "liveactivity"


def notification_of(batch: DeliveryBatch) -> Notification:
    try:
        return Notification.model_validate(batch.notification)
    except pydantic.ValidationError as exc:
        raise PoisonMessage(f"batch {batch.key}: invalid notification: {exc}") from None


async def _reread_devices(batch: DeliveryBatch, pool: asyncpg.Pool, settings: Settings) -> None:
    """Fill a batch the reconciler sent again from PostgreSQL: its users' active devices,
    or the devices of a retry batch, read as the fan-out reads them (with its shard's
    filter: its wave's users only, those deferred or in their quiet hours held back)."""
    async with acquire(pool) as conn:
        fill_devices(batch, await batch_device_rows(conn, batch, settings))


def fill_devices(batch: DeliveryBatch, rows: Sequence[asyncpg.Record]) -> None:
    """The batch carries the devices of ``rows`` (from ``batch_device_rows``), no longer
    its users or device ids."""
    batch.devices = {}
    for row in rows:
        if row["wire"] is not None:
            batch.devices.setdefault(row["platform"], []).append(orjson.loads(row["wire"]))
    batch.users = batch.device_ids = None


async def batch_device_rows(
    conn: asyncpg.Connection, batch: DeliveryBatch, settings: Settings
) -> Sequence[asyncpg.Record]:
    """The rows (``platform``, ``wire``) of the devices a batch the reconciler sends again
    (or gives up) stands for: its recorded device ids, or its range of users read as the
    fan-out reads them."""
    if batch.device_ids is not None and is_live_activity(batch):
        rows = await live_activities.tokens_by_id(conn, token_ids=batch.device_ids)
    elif batch.device_ids is not None:
        rows = await recipients.devices_by_id(conn, device_ids=batch.device_ids)
    else:
        assert batch.users is not None
        event = await events.load_event(conn, event_id=batch.event_id)
        if event is None:
            raise PoisonMessage(f"batch {batch.key}: unknown event {batch.event_id}")
        first, last = batch.users
        tokens = live_activities.audience_of(event)
        shard = shard_of_key(batch.key)
        wave = None
        if shard is not None:
            wave = await shards.shard_wave(conn, event_id=event.id, shard=shard)
        page_filter = await page_filter_of(conn, event, wave, settings, read_before=True)
        # Those the fan-out deferred stay deferred (read_before); the others it chose
        # to send: quiet hours are not judged again, unless they drop.
        quiet = "drop" if page_filter.quiet_hours == "drop" else "ignore"
        page_filter = replace(page_filter, quiet_hours=quiet)
        if tokens is not None:
            rows = await live_activities.activity_batch_tokens(
                conn, audience=tokens, first_token_id=first, last_token_id=last
            )
        elif event.user_id is not None:
            rows = await recipients.user_recipients(
                conn,
                user_id=event.user_id,
                after_user_id=first - 1,
                event_id=event.id,
                category=event.notification.get("category"),
                page_filter=page_filter,
            )
        else:
            if event.topic_id is None:  # a tag filter alone: every user of the app
                read = partial(recipients.app_batch_recipients, app_id=event.app_id)
            elif event.source_prefix is not None:  # the event's members, read at planning
                read = partial(sources.member_batch_recipients, topic_id=event.topic_id)
            else:
                read = partial(recipients.batch_recipients, topic_id=event.topic_id)
            rows = await read(
                conn,
                first_user_id=first,
                last_user_id=last,
                event_id=event.id,
                category=event.notification.get("category"),
                page_filter=page_filter,
            )
    return rows


async def _send_all(
    notification: Notification,
    collapse_key: str,
    devices: Sequence[Device],
    providers: Mapping[str, Provider],
    published_at: float | None = None,
) -> list[Outcome | None]:
    """Each device's outcome, in order; None where no provider serves its platform."""
    [outcomes] = await send_parts(
        [SendPart(notification, collapse_key, devices, published_at)], providers
    )
    return outcomes


@dataclass(frozen=True, slots=True)
class SendPart:
    """The devices of one batch and what they are sent: its event's notification."""

    notification: Notification
    collapse_key: str  # the event's id
    devices: Sequence[Device]
    published_at: float | None = None


async def send_parts(
    parts: Sequence[SendPart], providers: Mapping[str, Provider]
) -> list[list[Outcome | None]]:
    """Each part's devices' outcomes, in order; None where no provider serves its platform.

    Each part's notification is rendered once per locale, and each provider gets every
    part's devices of its platform(s) in one call, grouped by rendering (``send_groups``:
    one set of senders for them all, not one per locale or per batch: a bundle of a
    thousand one-device batches is one call per provider); the providers run concurrently.
    The accept latency is counted from the earliest part's publish (a bundle's events were
    published within one coalescing window).
    """
    groups: dict[tuple[int, str, str | None], list[int]] = defaultdict(list)
    for p, part in enumerate(parts):
        for index, device in enumerate(part.devices):
            groups[(p, device.platform, device.locale)].append(index)
    outcomes: list[list[Outcome | None]] = [[None] * len(part.devices) for part in parts]
    # By provider (the sink serves every platform): its groups' parts, locales and indexes.
    by_provider: dict[int, tuple[Provider, list[tuple[int, str | None, list[int]]]]] = {}
    for (p, platform, locale), indexes in groups.items():
        provider = providers.get(platform)
        if provider is not None:
            by_provider.setdefault(id(provider), (provider, []))[1].append((p, locale, indexes))

    async def send(provider: Provider, its_groups: list[tuple[int, str | None, list[int]]]) -> None:
        published = [parts[p].published_at for p, _, _ in its_groups]
        # This provider's task only (a copied context).
        metrics.published_at.set(min((t for t in published if t is not None), default=None))
        results = await provider.send_groups(
            [
                (
                    _rendered(parts[p].notification, locale, parts[p].collapse_key),
                    [parts[p].devices[i] for i in indexes],
                )
                for p, locale, indexes in its_groups
            ]
        )
        for (p, _, indexes), group_results in zip(its_groups, results, strict=True):
            for index, outcome in zip(indexes, group_results, strict=True):
                outcomes[p][index] = outcome

    await asyncio.gather(*(send(p, g) for p, g in by_provider.values()))
    return outcomes


# Renderings by (event, locale), shared by every batch of an event in this process, so an
# event is rendered once per locale, not once per batch. Bounded: a few recent events.
# Each keeps the notification it rendered, compared on use: event ids repeat across
# databases (one process in the tests meets several), and a stale rendering must never go.
_RENDERED: OrderedDict[tuple[str, str | None], tuple[Notification, RenderedNotification]] = (
    OrderedDict()
)
_RENDERED_MAX = 1024


def _rendered(
    notification: Notification, locale: str | None, collapse_key: str
) -> RenderedNotification:
    key = (collapse_key, locale)
    found = _RENDERED.get(key)
    if found is None or found[0] != notification:
        found = _RENDERED[key] = (
            notification,
            # The collapse key is the event's id (deliver_batch): its open tokens name it.
            render(notification, locale, collapse_key=collapse_key, event_id=int(collapse_key)),
        )
        if len(_RENDERED) > _RENDERED_MAX:
            _RENDERED.popitem(last=False)
    return found[1]


def _retry_batch(
    batch: DeliveryBatch, devices: list[Device], retry_after: float, settings: Settings
) -> tuple[DeliveryBatch, int]:
    """Only the devices that may still succeed, as a smaller batch, and its delay."""
    attempt = batch.attempt + 1
    # Only a trailing /r<n>: a batch held back by a breaker (.../r2/h1) keeps its attempt,
    # so its retries are named after it (.../r2/h1/r3), never after its parent's (.../r3).
    base_key = _RETRY_SUFFIX.sub("", batch.key)
    retry_batch = DeliveryBatch(
        event_id=batch.event_id,
        key=f"{base_key}/r{attempt}",
        attempt=attempt,
        notification=batch.notification,
        published_at=batch.published_at,
    )
    for device in devices:
        retry_batch.devices.setdefault(device.platform, []).append(device.wire())
    backoff = settings.retry_backoff().delay(attempt)
    return retry_batch, int(min(MAX_DELAY_SECONDS, max(backoff, retry_after + 0.999)))


async def _send_retry(queues: Queues, retry_batch: DeliveryBatch, delay: int) -> None:
    """Send a recorded retry batch. If SQS refuses, the reconciler sends it once due."""
    try:
        await queues.delivery.send(retry_batch.encode(), delay_seconds=delay)
    except Exception as exc:
        log.warning(
            "retry batch %s recorded but not sent (%r); the reconciler will send it",
            retry_batch.key,
            exc,
        )


def _count_reason(report: BatchReport, outcome: Outcome) -> None:
    reason = outcome.reason or outcome.kind.value
    report.failure_reasons[reason] = report.failure_reasons.get(reason, 0) + 1
