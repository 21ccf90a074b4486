"""Publishing an event: write it, then hand it to the fan-out queue (a transactional outbox).

The event row is committed as 'pending' before its message is sent. If the process
dies in between, or the message is lost, the reconciler (runtime/reconciler.py) finds
the event overdue and sends its message again; fan-out is idempotent, so sending twice
is harmless. A notification that no delivery batch could carry is refused here, before
anything is written.

Publish options (``PublishOptions``) hold an event in PostgreSQL until its time: a
``send_at`` in the future, or ``deliver_at_local`` waves (one per UTC instant at which a
subscriber's time zone reaches the local time, planned here from the audience's zones).
Such an event is committed 'scheduled', due then, and released by the reconciler's due
scan; nothing waits on a queue's delay or a sleeping process.

Every event belongs to an app (``app_id``): its topic or user is the app's, found by key
within the app. Idempotency keys work as payment APIs' do. A key belongs to the API key
that sent it (the CLI and other internal callers share one scope per app), so two clients
cannot collide. Sent again with the same request, it returns the first event; with a
different request (another topic or user, another notification) it is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from typing import Any, Literal

import asyncpg
import orjson

from fanout.errors import FanoutError
from fanout.notification import Notification
from fanout.queue.messages import MAX_MESSAGE_BYTES, FanoutTask
from fanout.queue.sqs import Queues
from fanout.stages.batching import batch_max_bytes as max_batch_bytes
from fanout.stages.batching import bytes_short
from fanout.stages.schedule import known_zone, plan_waves
from fanout.store import acquire, events, lifecycle, sources, subscriptions
from fanout.store.apps import DEFAULT_APP_ID
from fanout.store.waves import PlannedWave, audience_time_zones, insert_waves

log = logging.getLogger(__name__)

# How long an enqueued event may wait for its fan-out to start before the reconciler
# sends its message again (FANOUT_RECONCILE_AFTER's default; callers pass the setting).
DEFAULT_OVERDUE_AFTER = 60.0


class NotificationTooLarge(FanoutError, ValueError):
    """The notification cannot travel in a delivery batch: refused at the door."""


class IdempotencyConflict(FanoutError, ValueError):
    """The idempotency key was used before, in the same scope, for a different request."""

    def __init__(self) -> None:
        super().__init__(
            "the idempotency key was already used for a different request (another topic, "
            "user or notification); use a new key for a new request"
        )


class InvalidPublishOption(FanoutError, ValueError):
    """A publish option that cannot be honoured; ``field`` names it (the API's 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


QuietHours = Literal["defer", "drop", "ignore"]


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """When and how an event goes out. ``send_at``: not before (UTC); ``deliver_at_local``:
    at this time on each recipient's own clock, in waves; ``quiet_hours``: for recipients
    inside their quiet window at fan-out, defer (send when it ends), drop, or ignore it;
    ``expires_at``: nothing is sent after it; ``throttle_per_minute``: at most this many
    devices a minute (None: the app's default, if it has one, else as fast as it goes)."""

    send_at: datetime | None = None
    deliver_at_local: time | None = None
    quiet_hours: QuietHours = "defer"
    expires_at: datetime | None = None
    throttle_per_minute: int | None = None
    # The tag filter, compiled (fanout/tags.compile_filter); None: everyone.
    tag_filter: dict[str, Any] | None = None

    def fingerprinted(self) -> dict[str, Any]:
        """What an idempotency key binds besides the notification: the options set (none
        set: nothing, so requests without options keep their fingerprints)."""
        chosen = {
            "send_at": self.send_at.astimezone(UTC).isoformat() if self.send_at else None,
            "deliver_at_local": self.deliver_at_local.isoformat()
            if self.deliver_at_local
            else None,
            "quiet_hours": None if self.quiet_hours == "defer" else self.quiet_hours,
            "expires_at": self.expires_at.astimezone(UTC).isoformat() if self.expires_at else None,
            "throttle_per_minute": self.throttle_per_minute,
            "filter": self.tag_filter,
        }
        return {name: value for name, value in chosen.items() if value is not None}

    def check(self, now: datetime) -> None:
        """Raise ``InvalidPublishOption`` naming the field for options that contradict."""
        if self.throttle_per_minute is not None and self.throttle_per_minute < 1:
            raise InvalidPublishOption("throttle_per_minute", "must be at least 1 a minute")
        for name in ("send_at", "expires_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidPublishOption(name, "needs a time zone offset (e.g. Z for UTC)")
        if self.expires_at is not None:
            if self.expires_at <= now:
                raise InvalidPublishOption("expires_at", "is in the past: nothing would be sent")
            if self.send_at is not None and self.expires_at <= self.send_at:
                raise InvalidPublishOption("expires_at", "must be after send_at")


DEFAULT_OPTIONS = PublishOptions()


@dataclass(frozen=True, slots=True)
class Published:
    event_id: int
    created: bool  # False: the idempotency key named an event published before
    enqueued: bool = False  # False: not sent now (an earlier event, or left to the reconciler)
    held_until: datetime | None = None  # scheduled: released by the reconciler then


def check_fits_a_batch(
    notification: Notification, max_bytes: int, payload: dict[str, Any] | None = None
) -> None:
    """Raise ``NotificationTooLarge`` unless a batch of ``max_bytes`` carries the
    notification (every locale: batches carry it whole) and at least one device.
    ``payload``: its ``model_dump(mode="json", exclude_defaults=True)``, if the caller has it."""
    if payload is None:
        payload = notification.model_dump(mode="json", exclude_defaults=True)
    if short := bytes_short(payload, max_bytes):
        raise NotificationTooLarge(
            f"the notification is {short:,} bytes too large: with "
            f"its envelope and one device it must fit a delivery batch of "
            f"{max_bytes:,} bytes (FANOUT_BATCH_MAX_BYTES, at most 90% of the queue's "
            "MaximumMessageSize); send fewer locales or shorter text"
        )


def request_fingerprint(
    payload: dict[str, Any],
    *,
    topic: str | None,
    user: str | None,
    options: PublishOptions = DEFAULT_OPTIONS,
) -> bytes:
    """SHA-256 of the request's canonical JSON: what an idempotency key binds.

    ``payload`` is the validated notification without its defaults, so key order,
    whitespace or a field sent with its default value do not make a request different.
    """
    request: dict[str, Any] = {"topic": topic, "user": user, "notification": payload}
    if chosen := options.fingerprinted():
        request["options"] = chosen
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).digest()


async def record_event(
    pool: asyncpg.Pool,
    notification: Notification,
    *,
    app_id: int = DEFAULT_APP_ID,
    topic: str | None = None,
    user: str | None = None,
    idempotency_key: str | None = None,
    api_key_id: int | None = None,
    batch_max_bytes: int = MAX_MESSAGE_BYTES,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
    options: PublishOptions = DEFAULT_OPTIONS,
    default_time_zone: str = "UTC",
    now: datetime | None = None,
) -> Published:
    """Commit the event as pending: to a topic's subscribers, to one user's devices, or (a
    tag filter in ``options`` and neither) to every user of the app the filter matches, of
    the app ``app_id`` (the API passes its key's; the default app's for internal callers).
    With ``options`` holding it (a future ``send_at``, ``deliver_at_local`` waves) it is
    committed 'scheduled', due at its first release (``held_until``).

    A notification that cannot fit a batch of ``batch_max_bytes`` (capped at 90% of the
    queue's 1 MiB) raises ``NotificationTooLarge``; nothing is written. The event is due
    ``overdue_after`` seconds on: if its fan-out message is not sent by then (the
    publisher died, SQS was down), the reconciler sends it.

    ``api_key_id`` is the idempotency key's scope (None: the internal one). A key used
    before returns that event with ``created=False``, or raises IdempotencyConflict if
    the request differs.
    """
    # A tag filter alone (no topic, no user): every user of the app it matches (issue #25).
    app_wide = topic is None and user is None and options.tag_filter is not None
    if (topic is None) == (user is None) and not app_wide:
        raise ValueError("an event goes to exactly one of: a topic, a user (or a tag filter)")
    if notification.kind == "liveactivity":
        raise ValueError("a Live Activity update goes to its activity's tokens (live_activity)")
    check_fits_a_batch(notification, max_batch_bytes(batch_max_bytes, MAX_MESSAGE_BYTES))
    now = now or datetime.now(UTC)  # tests pass the instant publishing happens at
    options.check(now)
    payload = notification.model_dump(mode="json", exclude_defaults=True)
    fingerprint = (
        request_fingerprint(payload, topic=topic, user=user, options=options)
        if idempotency_key
        else None
    )
    async with pool.acquire() as conn, conn.transaction():
        topic_id = (
            await subscriptions.find_or_create_topic(conn, app_id=app_id, topic=topic)
            if topic
            else None
        )
        user_id = (
            await subscriptions.find_or_create_user(conn, app_id=app_id, user=user)
            if user
            else None
        )
        waves: list[PlannedWave] = []
        if options.deliver_at_local is not None:
            # Its waves come from the audience's time zones, read now: an app-wide filter's
            # users, or a source's members (read at planning), are not known yet (#25).
            if app_wide or (
                topic is not None
                and await sources.source_of_key(conn, app_id=app_id, key=topic) is not None
            ):
                raise InvalidPublishOption(
                    "deliver_at_local",
                    "not for an event to every user of the app, nor on a topic read from a "
                    "source: their time zones are not known at publish",
                )
            zones = await audience_time_zones(conn, topic_id=topic_id, user_id=user_id)
            if user_id is not None:  # one user: their own zone's wave only, if it is known
                zones = [zone for zone in zones if known_zone(zone)]
            default = None if user_id is not None and zones else default_time_zone
            waves = _waves(options, zones, default, now)
        first_release = waves[0].release_at if waves else options.send_at
        held_until = first_release if first_release and first_release > now else None
        event_id = await lifecycle.create(
            conn,
            app_id=app_id,
            topic_id=topic_id,
            user_id=user_id,
            notification=payload,
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            overdue_after=overdue_after,
            send_at=options.send_at,
            deliver_at_local=options.deliver_at_local,
            quiet_hours=options.quiet_hours,
            expires_at=options.expires_at,
            held_until=held_until,
            throttle_per_minute=options.throttle_per_minute,
            app_default_throttle=True,
            tag_filter=options.tag_filter,
        )
        if event_id is not None:
            if waves:
                await insert_waves(conn, event_id=event_id, waves=waves)
            return Published(event_id, created=True, held_until=held_until)
        # The conflicting row is committed: a concurrent first use made this INSERT wait.
        assert idempotency_key is not None  # only a reused key inserts nothing
        first = await events.event_by_idempotency_key(
            conn, app_id=app_id, api_key_id=api_key_id, idempotency_key=idempotency_key
        )
    if first is None:  # deleted since (its topic or user was): nothing to return
        raise RuntimeError("the event of this idempotency key was deleted meanwhile")
    if first.request_fingerprint not in (None, fingerprint):
        raise IdempotencyConflict()
    return Published(first.id, created=False)


def prepare_event(
    notification: Notification,
    *,
    app_id: int = DEFAULT_APP_ID,
    topic: str | None = None,
    user: str | None = None,
    idempotency_key: str | None = None,
    api_key_id: int | None = None,
    batch_max_bytes: int = MAX_MESSAGE_BYTES,
    options: PublishOptions = DEFAULT_OPTIONS,
    now: datetime | None = None,
) -> lifecycle.NewEvent:
    """The checks ``record_event`` makes before writing, for an event committed in a group
    (stages/group_commit.py): the same refusals (``NotificationTooLarge``,
    ``InvalidPublishOption``), the same fingerprint. Not for a held event (``groupable``)."""
    if (topic is None) == (user is None):
        raise ValueError("an event goes to exactly one of: a topic, a user")
    if notification.kind == "liveactivity":
        raise ValueError("a Live Activity update goes to its activity's tokens (live_activity)")
    if options.send_at is not None or options.deliver_at_local is not None:
        raise ValueError("a held event is recorded by record_event (it plans its release)")
    payload = notification.model_dump(mode="json", exclude_defaults=True)
    check_fits_a_batch(
        notification, max_batch_bytes(batch_max_bytes, MAX_MESSAGE_BYTES), payload=payload
    )
    options.check(now or datetime.now(UTC))
    return lifecycle.NewEvent(
        app_id=app_id,
        notification=payload,
        topic=topic,
        user=user,
        api_key_id=api_key_id,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint(payload, topic=topic, user=user, options=options)
        if idempotency_key
        else None,
        quiet_hours=options.quiet_hours,
        expires_at=options.expires_at,
    )


def _waves(
    options: PublishOptions, zones: list[str], default_zone: str | None, now: datetime
) -> list[PlannedWave]:
    """The waves of a deliver_at_local event, from send_at (or now) on."""
    assert options.deliver_at_local is not None
    after = max(now, options.send_at) if options.send_at else now
    return [
        PlannedWave(w.release_at, w.zones, w.catch_all)
        for w in plan_waves(zones, options.deliver_at_local, default_zone=default_zone, after=after)
    ]


async def enqueue_event(
    pool: asyncpg.Pool,
    queues: Queues,
    event_id: int,
    *,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
) -> None:
    """Send the event's fan-out message and mark it enqueued (due ``overdue_after`` on)."""
    await queues.fanout.send(FanoutTask(event_id).encode())
    async with pool.acquire() as conn:
        await lifecycle.mark_enqueued(conn, event_id=event_id, overdue_after=overdue_after)


async def publish(
    pool: asyncpg.Pool,
    queues: Queues | Callable[[], Awaitable[Queues]],
    notification: Notification,
    *,
    app_id: int = DEFAULT_APP_ID,
    topic: str | None = None,
    user: str | None = None,
    idempotency_key: str | None = None,
    api_key_id: int | None = None,
    enqueue_timeout: float | None = None,
    batch_max_bytes: int = MAX_MESSAGE_BYTES,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
    options: PublishOptions = DEFAULT_OPTIONS,
    default_time_zone: str = "UTC",
) -> Published:
    """Record and enqueue an event; the same idempotency key publishes nothing twice. An
    event ``options`` hold is not enqueued: the reconciler releases it on time.

    ``queues`` may be a coroutine function that opens them: the API opens its queues on
    first use, so that it starts, and commits events, while SQS is down. With
    ``enqueue_timeout`` an enqueue that fails or takes longer is left to the reconciler
    (the event is committed and due, so it is fanned out either way) and the result says
    ``enqueued=False``; without it, the failure is raised. ``batch_max_bytes``
    (FANOUT_BATCH_MAX_BYTES) is capped by the delivery queue's limit when the queues are
    open. Refusals: ``NotificationTooLarge``; idempotency: record_event.
    """
    if isinstance(queues, Queues):
        batch_max_bytes = max_batch_bytes(batch_max_bytes, queues.delivery.max_message_bytes)
    published = await record_event(
        pool,
        notification,
        app_id=app_id,
        topic=topic,
        user=user,
        idempotency_key=idempotency_key,
        api_key_id=api_key_id,
        batch_max_bytes=batch_max_bytes,
        overdue_after=overdue_after,
        options=options,
        default_time_zone=default_time_zone,
    )
    if not published.created or published.held_until is not None:
        return published
    return await enqueue_published(
        pool, queues, published, enqueue_timeout=enqueue_timeout, overdue_after=overdue_after
    )


async def enqueue_published(
    pool: asyncpg.Pool,
    queues: Queues | Callable[[], Awaitable[Queues]],
    published: Published,
    *,
    enqueue_timeout: float | None,
    overdue_after: float,
) -> Published:
    """Enqueue an event just committed; with ``enqueue_timeout``, a failure or a wait
    longer leaves it to the reconciler (``enqueued=False``), else it is raised."""
    try:
        async with asyncio.timeout(enqueue_timeout):
            opened = queues if isinstance(queues, Queues) else await queues()
            await enqueue_event(pool, opened, published.event_id, overdue_after=overdue_after)
    except Exception as exc:
        if enqueue_timeout is None:
            raise
        log.warning("event %d committed, enqueue deferred: %r", published.event_id, exc)
        return published
    return replace(published, enqueued=True)


class TooLateToCancel(FanoutError, ValueError):
    """The event has already ended (delivered, failed ...): there is nothing to stop."""


async def cancel(
    pool: asyncpg.Pool, event_id: int, *, app_id: int | None = None
) -> lifecycle.EventState | None:
    """Cancel an event; its status after ('cancelled' when it had not started fanning out,
    else its current state: it stops at the fan-out's next page and each batch's claim);
    None for an unknown event, or, with ``app_id``, one not of that app (None: the
    operator, any app). Cancelling again is a no-op; ``TooLateToCancel`` once it has ended
    otherwise."""
    async with acquire(pool) as conn:
        status = await lifecycle.cancel(conn, event_id=event_id, app_id=app_id)
        if status is not None:
            return status
        event = await events.load_event(conn, event_id=event_id)
    if event is None or (app_id is not None and event.app_id != app_id):
        return None
    raise TooLateToCancel(f"event {event_id} has already ended ({event.status})")
