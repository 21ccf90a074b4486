"""The delivery stage: one batch in, a push to each of its devices out.

It reads nothing per recipient from the database: everything it needs is in the
batch. Per batch it runs three statements: claim the batch (a redelivered batch
that is done is skipped), then, in one transaction, deactivate the dead tokens and
record the outcome. Devices that may succeed later go back on the queue as a smaller
batch with a delay; devices already sent never do.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
import pydantic

from fanout import retry
from fanout.config import Settings
from fanout.notification import Notification, RenderedNotification, render
from fanout.providers import Outcome, OutcomeKind, Provider
from fanout.queue.messages import DeliveryBatch, Device, PoisonMessage
from fanout.queue.sqs import MAX_DELAY_SECONDS, Queues
from fanout.store import queries

log = logging.getLogger(__name__)


class BatchBusy(Exception):
    """Another invocation is delivering this batch right now; retried later."""


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
    already_done: bool = False
    failure_reasons: dict[str, int] = field(default_factory=dict)


async def deliver_batch(
    batch: DeliveryBatch,
    pool: asyncpg.Pool,
    queues: Queues,
    providers: Mapping[str, Provider],
    settings: Settings,
) -> BatchReport:
    """Send one batch, record its outcome; a batch already done is skipped."""
    report = BatchReport(batch.event_id, batch.key, devices=batch.device_count())
    if not await _claim(batch, pool, report.devices, settings.visibility_timeout):
        report.already_done = True
        return report
    try:
        notification = Notification.model_validate(batch.notification)
    except pydantic.ValidationError as exc:
        raise PoisonMessage(f"batch {batch.key}: invalid notification: {exc}") from None

    devices = list(batch.iter_devices())
    lease = asyncio.create_task(_keep_lease(batch, pool, settings.visibility_timeout))
    try:
        outcomes = await _send_all(notification, str(batch.event_id), devices, providers)
    finally:
        lease.cancel()

    invalid_ids: list[int] = []
    to_retry: list[Device] = []
    retry_after = 0.0
    for device, outcome in zip(devices, outcomes, strict=True):
        if outcome is None:
            report.skipped += 1
        elif outcome.kind is OutcomeKind.OK:
            report.sent += 1
        elif outcome.kind is OutcomeKind.INVALID_TOKEN:
            invalid_ids.append(device.id)
        elif outcome.kind is OutcomeKind.RETRY:
            to_retry.append(device)
            retry_after = max(retry_after, outcome.retry_after or 0.0)
        else:
            report.failed += 1
            _count_reason(report, outcome)
    report.invalid = len(invalid_ids)

    if to_retry:
        if batch.attempt + 1 < settings.delivery_max_attempts:
            await _enqueue_retry(batch, to_retry, retry_after, queues, settings)
            report.retried = len(to_retry)
        else:
            report.failed += len(to_retry)
            report.failure_reasons["retries exhausted"] = len(to_retry)

    await _record_outcome(pool, batch, report, invalid_ids)
    if report.failure_reasons:
        log.warning("batch %s: failures %s", batch.key, report.failure_reasons)
    return report


_CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


async def _record_outcome(
    pool: asyncpg.Pool, batch: DeliveryBatch, report: BatchReport, invalid_ids: list[int]
) -> None:
    """Deactivate dead tokens and mark the batch done, in one transaction.

    The pushes are out by now: if recording fails, SQS would deliver the batch again and
    every device would get it twice. A database blip is worth waiting out instead.
    """

    async def record() -> None:
        async with pool.acquire() as conn, conn.transaction():
            if invalid_ids:
                await conn.execute(queries.DEACTIVATE_DEVICES, invalid_ids, "invalid token")
            await conn.execute(
                queries.FINISH_BATCH,
                batch.event_id,
                batch.key,
                report.sent,
                report.failed,
                report.invalid,
                report.skipped,
                report.retried,
            )

    await retry.retrying(
        record,
        backoff=retry.RECORD_OUTCOME,
        tries=retry.RECORD_OUTCOME_TRIES,
        on=_CONNECTION_ERRORS,
        what=f"recording sent batch {batch.key}",
    )


async def _keep_lease(batch: DeliveryBatch, pool: asyncpg.Pool, lease: int) -> None:
    """Renew the batch's lease while it sends, so a slow provider never lets a
    redelivered copy of it start sending too."""
    while True:
        await asyncio.sleep(max(1.0, lease / 3))
        try:
            async with pool.acquire() as conn:
                await conn.execute(queries.RENEW_BATCH_LEASE, batch.event_id, batch.key, lease)
        except _CONNECTION_ERRORS as exc:
            log.warning("could not renew the lease of batch %s: %r", batch.key, exc)


async def _claim(batch: DeliveryBatch, pool: asyncpg.Pool, devices: int, lease: int) -> bool:
    """True if this invocation should deliver the batch, False if it is already done."""
    async with pool.acquire() as conn:
        try:
            claimed = await conn.fetchval(
                queries.CLAIM_BATCH, batch.event_id, batch.key, batch.attempt, devices, lease
            )
        except asyncpg.ForeignKeyViolationError:
            raise PoisonMessage(f"batch {batch.key}: unknown event {batch.event_id}") from None
        if claimed:
            return True
        status = await conn.fetchval(queries.BATCH_STATUS, batch.event_id, batch.key)
    if status == "done":
        return False
    raise BatchBusy(f"batch {batch.key} of event {batch.event_id} is being delivered elsewhere")


async def _send_all(
    notification: Notification,
    collapse_key: str,
    devices: Sequence[Device],
    providers: Mapping[str, Provider],
) -> list[Outcome | None]:
    """Each device's outcome, in order; None where no provider serves its platform.

    The notification is rendered once per locale, and each (provider, locale) group
    goes to its provider in one call; the groups run concurrently.
    """
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for index, device in enumerate(devices):
        groups[(device.platform, device.locale)].append(index)
    outcomes: list[Outcome | None] = [None] * len(devices)

    async def send_group(platform: str, locale: str | None, indexes: list[int]) -> None:
        provider = providers.get(platform)
        if provider is None:
            return
        rendered = _rendered(notification, locale, collapse_key)
        results = await provider.send(rendered, [devices[i] for i in indexes])
        for index, outcome in zip(indexes, results, strict=True):
            outcomes[index] = outcome

    await asyncio.gather(*(send_group(p, loc, ix) for (p, loc), ix in groups.items()))
    return outcomes


# Renderings by (event, locale), shared by every batch of an event in this process, so an
# event is rendered once per locale, not once per batch. Bounded: a few recent events.
_RENDERED: OrderedDict[tuple[str, str | None], RenderedNotification] = OrderedDict()
_RENDERED_MAX = 1024


def _rendered(
    notification: Notification, locale: str | None, collapse_key: str
) -> RenderedNotification:
    key = (collapse_key, locale)
    found = _RENDERED.get(key)
    if found is None:
        found = _RENDERED[key] = render(notification, locale, collapse_key=collapse_key)
        if len(_RENDERED) > _RENDERED_MAX:
            _RENDERED.popitem(last=False)
    return found


async def _enqueue_retry(
    batch: DeliveryBatch,
    devices: list[Device],
    retry_after: float,
    queues: Queues,
    settings: Settings,
) -> None:
    """Re-enqueue only the devices that may still succeed, later, as a smaller batch."""
    attempt = batch.attempt + 1
    base_key = batch.key.split("/r", 1)[0]
    retry = DeliveryBatch(
        event_id=batch.event_id,
        key=f"{base_key}/r{attempt}",
        attempt=attempt,
        notification=batch.notification,
    )
    for device in devices:
        retry.devices.setdefault(device.platform, []).append(device.wire())
    backoff = settings.retry_backoff().delay(attempt)
    delay = int(min(MAX_DELAY_SECONDS, max(backoff, retry_after + 0.999)))
    await queues.delivery.send(retry.encode(), delay_seconds=delay)


def _count_reason(report: BatchReport, outcome: Outcome) -> None:
    reason = outcome.reason or outcome.kind.value
    report.failure_reasons[reason] = report.failure_reasons.get(reason, 0) + 1
