"""Publishing a Live Activity update: an event whose audience is the activity's tokens.

An update (``start``, ``update``, ``end``) is committed as an event like any other and goes
through the same pipeline (shards over the activity's tokens, batches, the reconciler);
only its audience differs (store/live_activities.py). Under the activity's row lock it
gets its ``aps.timestamp``, greater than every earlier update's, so the device (which keeps
the newest) ends on the last one published, whatever order the batches arrive in; that is
also why an update still queued when a newer one is published may be skipped for the
tokens it has not reached (``superseded``, store/fragments.SUPERSEDED). An ``end`` retires
the activity's tokens from its dismissal date on (at once without one): nothing published
after that goes to them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from fanout.notification import Notification
from fanout.queue.messages import MAX_MESSAGE_BYTES
from fanout.queue.sqs import Queues
from fanout.stages.batching import batch_max_bytes as max_batch_bytes
from fanout.stages.publish import (
    DEFAULT_OVERDUE_AFTER,
    IdempotencyConflict,
    Published,
    check_fits_a_batch,
    enqueue_published,
    request_fingerprint,
)
from fanout.store import events, lifecycle, live_activities
from fanout.store.apps import DEFAULT_APP_ID


@dataclass(frozen=True, slots=True)
class UpdatePublished:
    published: Published
    timestamp: int  # its aps.timestamp (0 when the idempotency key named an earlier one)
    priority_10_last_hour: int  # the activity's, this update included


async def publish_update(
    pool: asyncpg.Pool,
    queues: Queues | Callable[[], Awaitable[Queues]],
    notification: Notification,
    *,
    activity_key: str,
    app_id: int = DEFAULT_APP_ID,
    idempotency_key: str | None = None,
    api_key_id: int | None = None,
    enqueue_timeout: float | None = None,
    batch_max_bytes: int = MAX_MESSAGE_BYTES,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
) -> UpdatePublished:
    """Commit the update as an event of the app ``app_id``'s activity ``activity_key``
    (created if new), then enqueue it as ``publish`` does. Idempotency keys work as for a
    topic's events."""
    live = notification.live_activity
    if notification.kind != "liveactivity" or live is None:
        raise ValueError("a Live Activity update is a liveactivity notification")
    check_fits_a_batch(notification, max_batch_bytes(batch_max_bytes, MAX_MESSAGE_BYTES))
    fingerprint = None
    if idempotency_key:
        asked = notification.model_dump(mode="json", exclude_defaults=True)
        fingerprint = request_fingerprint(
            {"live_activity_key": activity_key, **asked}, topic=None, user=None
        )
    async with pool.acquire() as conn, conn.transaction():
        activity_id = await live_activities.find_or_create_activity(
            conn, app_id=app_id, activity_key=activity_key
        )
        timestamp = await live_activities.next_timestamp(conn, activity_id=activity_id)
        stamped = notification.model_copy(
            update={"live_activity": live.model_copy(update={"timestamp": timestamp})}
        )
        event_id = await lifecycle.create(
            conn,
            app_id=app_id,
            topic_id=None,
            user_id=None,
            live_activity_id=activity_id,
            notification=stamped.model_dump(mode="json", exclude_defaults=True),
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            overdue_after=overdue_after,
        )
        if event_id is not None:
            if live.event == "end":
                await live_activities.end_activity(
                    conn, activity_id=activity_id, ends_at=_instant(live.dismissal_date)
                )
            budget = await live_activities.priority_10_last_hour(conn, activity_id=activity_id)
        else:
            assert idempotency_key is not None  # only a reused key inserts nothing
            first = await events.event_by_idempotency_key(
                conn, app_id=app_id, api_key_id=api_key_id, idempotency_key=idempotency_key
            )
            budget = await live_activities.priority_10_last_hour(conn, activity_id=activity_id)
    if event_id is None:
        if first is None:
            raise RuntimeError("the event of this idempotency key was deleted meanwhile")
        if first.request_fingerprint not in (None, fingerprint):
            raise IdempotencyConflict()
        return UpdatePublished(Published(first.id, created=False), 0, budget)
    published = await enqueue_published(
        pool,
        queues,
        Published(event_id, created=True),
        enqueue_timeout=enqueue_timeout,
        overdue_after=overdue_after,
    )
    return UpdatePublished(published, timestamp, budget)


def _instant(unix_seconds: int | None) -> datetime | None:
    return None if unix_seconds is None else datetime.fromtimestamp(unix_seconds, UTC)
