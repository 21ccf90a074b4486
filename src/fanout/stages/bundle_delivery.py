"""A bundle's batches delivered together (FANOUT_COALESCE_DIRECT, issue #26).

A bundle carries many events' one-device batches. Delivered each by ``deliver_batch`` they
cost ~6 statements a batch (claim, a transaction recording the outcome, the event's end):
194 for a bundle of 30, and that, not the sending, set a coalesced 1:1 send's latency.
Here the batches of a bundle are claimed in one statement (``batches.claim_batches``), sent
in one call per provider (``delivery.send_parts``), their leases renewed in one statement
per renewal, their outcomes recorded in one statement (``batches.finish_batches``: counts,
per-platform outcomes, the devices not sent to), and their events ended in one
(``lifecycle.finish_many``): three statements a bundle, whatever the number of its events.

Nothing an event owns is shared: each batch keeps its own key, notification, devices,
lease and counts, each device is sent its own batch's rendering, and each event ends on its
own sums, as ``deliver_batch`` does it. What is rare stays per batch, with the code that
already kept it: a batch whose event was cancelled or has expired (``finish_unsent``), the
consequences of a failed device (dead tokens, the retry batch, held devices, webhooks:
``record_consequences``, in the transaction of the outcome), and a batch re-read from
PostgreSQL or a Live Activity's (``deliver_batch``, by the caller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar
from uuid import UUID

import asyncpg

from fanout import retry
from fanout.config import Settings
from fanout.providers import Outcome, Provider
from fanout.providers.apps import providers_of
from fanout.queue.messages import DeliveryBatch, PoisonMessage
from fanout.queue.sqs import Queues
from fanout.stages import leases
from fanout.stages.delivery import (
    BatchReport,
    Judged,
    SendPart,
    finish_unsent,
    has_consequences,
    judge,
    notification_of,
    record_consequences,
    send_parts,
    send_retries,
)
from fanout.store import UNTRUSTWORTHY, acquire, batches, lifecycle
from fanout.store.batches import BatchId, BatchOutcome

log = logging.getLogger(__name__)

T = TypeVar("T")


async def deliver_together(
    bundle: Sequence[DeliveryBatch],
    pool: asyncpg.Pool,
    queues: Queues,
    providers: Mapping[str, Provider],
    settings: Settings,
) -> list[BatchReport]:
    """Deliver batches that carry their devices (none re-read, none a Live Activity's),
    each of them once, in a few statements for them all; a report per batch, in order.
    Raises, once every batch is recorded, the first batch's failure (an invalid
    notification: its lease is given up, so the message comes back for it alone)."""
    by_key: dict[BatchId, DeliveryBatch] = {}
    for batch in bundle:  # a batch twice in a message is delivered once
        by_key.setdefault((batch.event_id, batch.key), batch)
    keys = sorted(by_key)  # the order every statement locks the rows in
    reports = {key: BatchReport(key[0], key[1], devices=by_key[key].device_count()) for key in keys}
    if not keys:
        return []
    lease = settings.visibility_timeout
    owner = leases.new_owner()
    try:
        claims = await leases.claim(
            lambda: _claim(pool, [by_key[key] for key in keys], owner, settings),
            f"claiming {len(keys)} batches of a bundle",
        )
    except BaseException as failure:
        # The claim may have committed unanswered: what this owner may hold is given up.
        await leases.give_up(_releaser(pool, keys, owner, settings), failure, 0)

    sending: list[tuple[DeliveryBatch, int]] = []  # (batch, its event's app)
    stopped: list[tuple[DeliveryBatch, str, int | None]] = []
    for key, claim in zip(keys, claims, strict=True):
        report = reports[key]
        if claim.claimed and claim.stopped is not None:
            stopped.append((by_key[key], claim.stopped, claim.app_id))
        elif claim.claimed:
            assert claim.app_id is not None  # claimed: its event exists
            sending.append((by_key[key], claim.app_id))
        elif not claim.event_known:  # deleted since (its user or app was): nothing to send
            log.info("batch %s: its event %d is gone", key[1], key[0])
            report.already_done = True
        elif claim.status == "done":
            report.already_done = True
        else:  # another invocation holds it (its lease_left), or a concurrent claim does
            report.busy = True
            report.lease_left = lease if claim.lease_left is None else claim.lease_left

    failures: list[BaseException] = []
    for batch, reason, app_id in stopped:  # rare: a cancelled or expired event's batch
        report = reports[batch.event_id, batch.key]
        try:
            await finish_unsent(batch, pool, owner, reason, report, app_id)
        except leases.LeaseLost as refused:
            _lost(report, refused, lease)
        except Exception as failure:
            await _give_up_quietly(pool, [(batch.event_id, batch.key)], owner, settings, failure)
            failures.append(failure)

    parts: list[tuple[DeliveryBatch, int, SendPart]] = []
    for batch, app_id in sending:
        try:
            notification = notification_of(batch)
        except PoisonMessage as failure:  # nothing sent: its next try may have it at once
            await _give_up_quietly(pool, [(batch.event_id, batch.key)], owner, settings, failure)
            failures.append(failure)
            continue
        devices = list(batch.iter_devices())
        part = SendPart(notification, str(batch.event_id), devices, batch.published_at)
        parts.append((batch, app_id, part))
    if parts:
        await _send_and_record(parts, reports, pool, queues, providers, owner, settings)
    if failures:
        raise failures[0]
    return [reports[(b.event_id, b.key)] for b in bundle if (b.event_id, b.key) in reports]


async def _send_and_record(
    parts: list[tuple[DeliveryBatch, int, SendPart]],
    reports: dict[BatchId, BatchReport],
    pool: asyncpg.Pool,
    queues: Queues,
    providers: Mapping[str, Provider],
    owner: UUID,
    settings: Settings,
) -> None:
    lease = settings.visibility_timeout
    keys = [(batch.event_id, batch.key) for batch, _, _ in parts]
    by_app: dict[int, list[int]] = {}
    for index, (_, app_id, _) in enumerate(parts):
        by_app.setdefault(app_id, []).append(index)

    async def send_all() -> list[list[Outcome | None]]:
        outcomes: list[list[Outcome | None]] = [[] for _ in parts]

        async def send_app(app_id: int, indexes: list[int]) -> None:
            # The event's app's providers (its credentials), held until the sends are done.
            async with providers_of(providers, pool, app_id) as app_providers:
                sent = await send_parts([parts[i][2] for i in indexes], app_providers)
            for index, its_outcomes in zip(indexes, sent, strict=True):
                outcomes[index] = its_outcomes

        await asyncio.gather(*(send_app(app, indexes) for app, indexes in by_app.items()))
        return outcomes

    try:
        outcomes = await _while_held(send_all(), pool, keys, owner, settings)
    except leases.LeaseLost as refused:
        # A renewal was refused: the send stopped there. The batches still held are given
        # up (their next copy sends them again, with the same collapse key); the one taken
        # is its holder's to send and record.
        await _give_up_quietly(pool, keys, owner, settings, refused)
        for key in keys:
            _lost(reports[key], refused, lease)
        return
    except BaseException as failure:
        # Stopped mid-send (a worker's grace ran out): the next copy may go on at once.
        await leases.give_up(_releaser(pool, keys, owner, settings), failure, lease)

    judged: list[Judged] = []
    for (batch, _, part), its_outcomes in zip(parts, outcomes, strict=True):
        report = reports[batch.event_id, batch.key]
        judged.append(judge(batch, part.devices, its_outcomes, report, settings))
    app_of = {(batch.event_id, batch.key): app_id for batch, app_id, _ in parts}
    finished = await _record(pool, judged, reports, app_of, owner, settings)
    for key in keys:
        if key not in finished:  # taken by another invocation: it records the outcome
            _lost(reports[key], leases.lost("batch", key[1]), lease)
    ended = [j.batch.event_id for j in judged if j.ends_event and _key(j) in finished]
    if ended:
        await _retrying(pool, lambda conn: lifecycle.finish_many(conn, event_ids=ended), "ending")
    for j in judged:
        if _key(j) in finished:
            await send_retries(queues, j, reports[_key(j)])


def _key(judged: Judged) -> BatchId:
    return judged.batch.event_id, judged.batch.key


async def _record(
    pool: asyncpg.Pool,
    judged: list[Judged],
    reports: dict[BatchId, BatchReport],
    app_of: dict[BatchId, int],
    owner: UUID,
    settings: Settings,
) -> set[BatchId]:
    """Every batch's outcome in one statement (and, for those with failed devices, their
    consequences in its transaction); the batches recorded (those ``owner`` still held).

    The pushes are out by now: a database blip is waited out (``retry.RECORD_OUTCOME``)
    rather than have SQS deliver the bundle again and every device get it twice."""
    rows = []
    for j in judged:
        report, detail = reports[_key(j)], j.detail
        rows.append(
            BatchOutcome(
                event_id=j.batch.event_id,
                batch_key=j.batch.key,
                sent=report.sent,
                failed=report.failed,
                invalid=report.invalid,
                skipped=report.skipped,
                retried=report.retried,
                failure_reasons=report.failure_reasons or None,
                by_platform=detail.by_platform,
                device_ids=detail.device_ids,
                platforms=detail.platforms,
                kinds=detail.kinds,
                reasons=detail.reasons,
            )
        )
    consequences = [j for j in judged if has_consequences(j)]

    async def record(conn: asyncpg.Connection) -> set[BatchId]:
        if not consequences:  # the common case: every device sent
            return await batches.finish_batches(conn, outcomes=rows, owner=owner)
        async with conn.transaction():
            finished = await batches.finish_batches(conn, outcomes=rows, owner=owner)
            for j in consequences:
                if _key(j) in finished:
                    await record_consequences(conn, j, settings, app_id=app_of[_key(j)])
        return finished

    return await _retrying(pool, record, f"recording {len(rows)} sent batches of a bundle")


async def _retrying(
    pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]], what: str
) -> T:
    async def once() -> T:
        async with acquire(pool) as conn:
            return await work(conn)

    return await retry.retrying(
        once,
        backoff=retry.RECORD_OUTCOME,
        tries=retry.RECORD_OUTCOME_TRIES,
        on=UNTRUSTWORTHY,
        what=what,
    )


async def _claim(
    pool: asyncpg.Pool, bundle: Sequence[DeliveryBatch], owner: UUID, settings: Settings
) -> list[batches.BundleClaim]:
    async with acquire(pool) as conn:
        return await batches.claim_batches(
            conn,
            batches=[(b.event_id, b.key, b.attempt, b.device_count()) for b in bundle],
            owner=owner,
            lease_seconds=settings.visibility_timeout,
            overdue_after=settings.reconcile_after_seconds,
        )


def _releaser(
    pool: asyncpg.Pool, keys: Sequence[BatchId], owner: UUID, settings: Settings
) -> Callable[[str], Awaitable[object]]:
    async def release(reason: str) -> None:
        async with acquire(pool) as conn:
            await batches.release_batches(
                conn,
                batches=keys,
                owner=owner,
                overdue_after=settings.reconcile_after_seconds,
                reason=reason,
            )

    return release


async def _give_up_quietly(
    pool: asyncpg.Pool,
    keys: Sequence[BatchId],
    owner: UUID,
    settings: Settings,
    failure: BaseException,
) -> None:
    """Give the leases of ``keys`` up after ``failure`` without raising it: the other
    batches of the bundle go on."""
    try:
        await leases.give_up(_releaser(pool, keys, owner, settings), failure, 0)
    except BaseException as raised:
        if raised is not failure and not isinstance(raised, leases.LeaseKept):
            raise


def _lost(report: BatchReport, refused: leases.LeaseLost, lease: int) -> None:
    """The batch was taken by another invocation (its lease lapsed): this one records
    nothing of it; its copy of the message is redundant."""
    log.warning("%s; stopped", refused)
    report.busy, report.lease_left = True, float(lease)


async def _while_held(
    sending: Awaitable[list[list[Outcome | None]]],
    pool: asyncpg.Pool,
    keys: Sequence[BatchId],
    owner: UUID,
    settings: Settings,
) -> list[list[Outcome | None]]:
    """The outcomes of ``sending``, every batch's lease renewed meanwhile (one statement
    for all every third of a lease). Raises ``LeaseLost`` if one was refused: the send is
    stopped there."""
    return await leases.while_renewing(sending, _keep_leases(pool, keys, owner, settings))


async def _keep_leases(
    pool: asyncpg.Pool, keys: Sequence[BatchId], owner: UUID, settings: Settings
) -> None:
    lease = settings.visibility_timeout
    while True:
        await asyncio.sleep(max(1.0, lease / 3))
        try:
            async with acquire(pool) as conn:
                renewed = await batches.renew_batch_leases(
                    conn,
                    batches=keys,
                    owner=owner,
                    lease_seconds=lease,
                    overdue_after=settings.reconcile_after_seconds,
                )
        except UNTRUSTWORTHY as exc:
            log.warning("could not renew the leases of %d batches: %r", len(keys), exc)
            continue
        for key in keys:
            if key not in renewed:
                raise leases.lost("batch", key[1])
