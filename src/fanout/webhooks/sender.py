"""The webhook sender: claims due deliveries from the outbox, signs and posts them, and
records each answer. The worker runs it as a task beside its consumers (``run``); the
WebhookFunction runs passes of it on a schedule (``send_due``).

A delivery is claimed with a lease (its due time moved on), so a sender killed mid-call
leaves it due again and another sends it, with the same ``webhook-id``: a receiver sees
a repeat, never a loss. Each claim is made in a new owner's name; one the database
failed (it may have committed with no answer, as during a PostgreSQL restart) is given
back at once (or by the next pass, if the database is away longer), so its rows are sent
then rather than when the lease ends (issue #27).

Every call resolves the endpoint's name and checks each address (``addresses``) and goes
to the address checked, with the name as TLS server name and Host: a DNS answer changed
since registration cannot point it into fanout's network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import httpx
import orjson

from fanout import retry
from fanout.config import Settings
from fanout.credentials.sealing import CannotOpen, Keyring
from fanout.metrics import WEBHOOK_CALLS
from fanout.store import UNTRUSTWORTHY, acquire, webhooks
from fanout.webhooks import addresses, signing

log = logging.getLogger(__name__)


# The most of an endpoint's answer read (the row keeps ANSWER_CHARS characters of it).
ANSWER_BYTES = 4 * webhooks.ANSWER_CHARS
# Each sender deletes old delivered rows once a minute, at most this many at a time.
PURGE_EVERY_SECONDS = 60.0
# Giving back a claim is one short statement; past this the database is not answering.
_GIVE_BACK_TIMEOUT_SECONDS = 5.0
PURGE_ROWS = 10_000


@dataclass(slots=True)
class Pass:
    """What one pass did."""

    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


def body_of(claimed: webhooks.Claimed) -> bytes:
    """The message as posted: ``{"type", "timestamp", "data"}`` (the specification's
    suggested shape), the same bytes on every try. ``data`` is the stored JSON, unparsed."""
    head = orjson.dumps({"type": claimed.kind, "timestamp": claimed.created_at})
    return head[:-1] + b',"data":' + claimed.payload.encode() + b"}"


def call_url(target: addresses.Target, address: str) -> str:
    """The URL with its host replaced by the checked address."""
    host = f"[{address}]" if ":" in address else address
    return f"{target.scheme}://{host}:{target.port}{target.path}"


class WebhookSender:
    """Sends the outbox's due deliveries, at most ``FANOUT_WEBHOOK_CONCURRENCY`` at once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        keyring: Keyring | None,
        *,
        resolver: addresses.Resolver = addresses.system_resolver,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.keyring = keyring
        self.resolver = resolver
        # The owner of a claim that failed on the database's side, until what it may
        # hold is given back (``send_due``).
        self._unanswered: uuid.UUID | None = None
        # The lease outlasts every call of a claim: they run at once, each within the
        # timeout (twice it: resolving, then the call); the margin covers recording the
        # answers. A sender killed mid-call leaves its rows due again once it is over.
        self.lease_seconds = 2 * settings.webhook_timeout_seconds + 5
        # No connection is kept between calls: a pooled connection is keyed by address,
        # and reused for another name on that address it would carry that name's request
        # over a TLS session checked for the first one.
        self.client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": "fanout-webhooks"},
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, stopping: asyncio.Event) -> None:
        """Send due deliveries until ``stopping`` is set; idle, look every
        FANOUT_WEBHOOK_POLL_SECONDS."""
        if self.keyring is None:
            log.info("webhooks are not sent: FANOUT_SECRET_KEY is not set")
            return
        failures = 0
        purged_at = -math.inf
        try:
            while not stopping.is_set():
                try:
                    if time.monotonic() - purged_at >= PURGE_EVERY_SECONDS:
                        purged_at = time.monotonic()
                        await self.purge()
                    done = await self.send_due()
                    failures = 0
                except UNTRUSTWORTHY as exc:  # the database is away: look again later
                    failures += 1
                    done = Pass()
                    log.warning("webhook sender: %r", exc)
                if done.claimed < self.settings.webhook_concurrency:
                    pause = self.settings.webhook_poll_seconds
                    if failures:
                        pause = retry.RECONNECT.delay(failures)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), pause)
        finally:
            await self.aclose()

    async def purge(self) -> int:
        """Delete rows delivered more than FANOUT_WEBHOOK_KEEP_DAYS ago (up to
        PURGE_ROWS); how many. The outbox stays as large as a week's deliveries."""
        async with acquire(self.pool) as conn:
            return await webhooks.purge_delivered(
                conn,
                older_than_seconds=self.settings.webhook_keep_days * 86400,
                limit=PURGE_ROWS,
            )

    async def send_due(self) -> Pass:
        """Claim what is due (up to the concurrency) and send it all; what was done.
        Without FANOUT_SECRET_KEY nothing is claimed (no secret opens): the rows wait."""
        if self.keyring is None:
            return Pass()
        if self._unanswered is not None:
            await self._give_back()
        owner = uuid.uuid4()
        try:
            async with acquire(self.pool) as conn:
                claimed = await webhooks.claim_deliveries(
                    conn,
                    limit=self.settings.webhook_concurrency,
                    owner=owner,
                    lease_seconds=self.lease_seconds,
                )
        except UNTRUSTWORTHY:
            # It may have committed unanswered: what it took is given back, now if the
            # database is back within a few seconds (a restart), else at the next pass.
            self._unanswered = owner
            with contextlib.suppress(*UNTRUSTWORTHY, TimeoutError):
                await retry.retrying(
                    self._give_back,
                    backoff=retry.RELEASE_LEASE,
                    tries=retry.RELEASE_LEASE_TRIES,
                    on=(*UNTRUSTWORTHY, TimeoutError),
                    what="giving back a webhook claim left unanswered",
                )
            raise
        done = Pass(claimed=len(claimed))
        results = await asyncio.gather(*(self._deliver(row, owner) for row in claimed))
        for result in results:
            if result == "delivered":
                done.delivered += 1
            elif result == "failed":
                done.failed += 1
            else:
                done.retrying += 1
        return done

    async def _give_back(self) -> None:
        """Give back what the claim of ``_unanswered`` may hold (issue #27)."""
        owner = self._unanswered
        assert owner is not None

        async def release() -> int:
            async with acquire(self.pool) as conn:
                return await webhooks.release_unanswered_claim(
                    conn, owner=owner, lease_seconds=self.lease_seconds
                )

        given_back = await asyncio.wait_for(release(), _GIVE_BACK_TIMEOUT_SECONDS)
        self._unanswered = None
        if given_back:
            log.info("%d webhook deliveries claimed unanswered given back", given_back)

    async def _deliver(self, row: webhooks.Claimed, owner: uuid.UUID) -> str:
        if row.disabled:
            await self._record(
                lambda conn: webhooks.fail_disabled(conn, delivery_id=row.id, owner=owner)
            )
            return "failed"
        status, answer = await self._call(row)
        if status is not None and 200 <= status < 300:
            WEBHOOK_CALLS.labels("delivered").inc()
            await self._record(
                lambda conn: webhooks.record_delivered(
                    conn, delivery_id=row.id, owner=owner, status_code=status
                )
            )
            return "delivered"
        after: list[str | None] = [None]

        async def failure(conn: asyncpg.Connection) -> None:
            after[0] = await webhooks.record_failure(
                conn,
                delivery_id=row.id,
                owner=owner,
                status_code=status,
                answer=answer,
                retry_in=self.settings.webhook_backoff().delay(row.attempts),
                window_seconds=self.settings.webhook_retry_hours * 3600,
                disable_after_seconds=self.settings.webhook_disable_after_hours * 3600,
            )

        await self._record(failure)
        # Not pending after: failed for good, or failed with its endpoint, disabled by
        # another row's failure meanwhile (None: this sender no longer held it).
        result = "retry" if after[0] == "pending" else "failed"
        WEBHOOK_CALLS.labels(result).inc()
        return result

    async def _call(self, row: webhooks.Claimed) -> tuple[int | None, str]:
        """The endpoint's status and answer (None and why, when nothing answered)."""
        assert self.keyring is not None
        allow_private = self.settings.webhook_allow_private
        try:
            secret = self.keyring.open(
                row.secret_sealed,
                kek_id=row.kek_id,
                app_id=row.app_id,
                provider=webhooks.SEALED_FOR,
            )
            target = addresses.parse_url(row.url, allow_private=allow_private)
            checked = await asyncio.wait_for(
                addresses.checked_addresses(
                    target, resolver=self.resolver, allow_private=allow_private
                ),
                self.settings.webhook_timeout_seconds,
            )
        except TimeoutError:
            return None, "resolving the endpoint's name took too long"
        except CannotOpen as exc:
            return None, f"the endpoint's secret: {exc}"
        except addresses.RefusedAddress as exc:
            WEBHOOK_CALLS.labels("refused").inc()
            return None, f"refused: {exc}"
        body = body_of(row)
        headers = signing.headers(
            signing.secret_key(secret.decode()),
            webhook_id=row.webhook_id,
            timestamp=int(time.time()),
            body=body,
        )
        default_port = 443 if target.scheme == "https" else 80
        host = f"[{target.host}]" if ":" in target.host else target.host
        headers["host"] = host if target.port == default_port else f"{host}:{target.port}"
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            return await asyncio.wait_for(
                self._post(call_url(target, checked[0]), body, headers, extensions),
                self.settings.webhook_timeout_seconds,
            )
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # one endpoint's oddity is its call's failure, never the worker's
            log.warning("webhook call to endpoint %s failed: %r", row.endpoint_id, exc)
            return None, type(exc).__name__

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], extensions: dict[str, str]
    ) -> tuple[int, str]:
        """POST; the status and the start of the answer. Only what is kept is read (the
        endpoint is the user's: an endless answer must not fill this process's memory)."""
        request = self.client.build_request(
            "POST", url, content=body, headers=headers, extensions=extensions
        )
        response = await self.client.send(request, stream=True)
        try:
            kept = bytearray()
            async for chunk in response.aiter_bytes():
                kept += chunk
                if len(kept) >= ANSWER_BYTES:
                    break
        finally:
            await response.aclose()
        text = bytes(kept[:ANSWER_BYTES]).decode(errors="replace")
        return response.status_code, text[: webhooks.ANSWER_CHARS]

    async def _record(self, write: Callable[[asyncpg.Connection], Awaitable[object]]) -> None:
        """Run ``write`` (a function of a connection), waiting a database blip out; if it
        still fails, the row is due again when its lease ends (sent again, same id)."""

        async def record() -> None:
            async with acquire(self.pool) as conn:
                await write(conn)

        try:
            await retry.retrying(
                record,
                backoff=retry.RECORD_OUTCOME,
                tries=retry.RECORD_OUTCOME_TRIES,
                on=UNTRUSTWORTHY,
                what="recording a webhook call",
            )
        except UNTRUSTWORTHY as exc:
            log.warning("a webhook call's answer was not recorded (%r); it is sent again", exc)
