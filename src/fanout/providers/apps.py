"""Each app's providers, built from its stored credentials on demand, for the delivery stage.

A worker serves every app without a restart: the first batch of an app builds the
providers of the credentials it has stored (opened with FANOUT_SECRET_KEY), and they are
kept, least recently used dropped past ``capacity`` apps, so a worker's memory is bounded
by the apps it is busy with, not by the apps configured. A credential set, replaced or
removed takes effect within ``refresh_seconds`` (60): an app's entry older than that is
checked against its credentials' ``updated_at`` (one indexed read of a few rows) and
rebuilt if they changed. A batch holds its app's providers for as long as it sends (a
lease): a rebuilt or dropped entry's providers are closed only once no batch uses them,
so a batch in flight finishes with the credential it started with.

The app ``default`` also has the FANOUT_APNS_*, _FCM_* and _VAPID_* providers, for each
platform it has no stored credential for (until `fanout apps import-env default`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from fanout.config import Settings
from fanout.credentials.sealing import Keyring
from fanout.credentials.stored import open_credential
from fanout.credentials.validation import Credential
from fanout.providers import Provider, providers_of_credential
from fanout.providers.quota import QuotaStore
from fanout.store import acquire, apps

log = logging.getLogger(__name__)

# How long a credential change may take to reach a worker (the promise: 60 s).
REFRESH_SECONDS = 60.0
# Apps whose providers a worker keeps. An idle provider holds no connection (HTTP/2
# connections are opened on demand), only its parsed key and small state.
CAPACITY = 256


@dataclass
class _AppEntry:
    providers: dict[str, Provider]  # by wire platform, from the app's stored credentials
    stamps: dict[str, datetime]  # provider -> the credential's updated_at
    checked_at: float
    leases: int = 0
    retired: bool = False  # replaced or dropped: closed when the last lease ends


@dataclass
class AppProviders(Mapping[str, Provider]):
    """As a mapping: the default app's providers (what a caller without an app gets, e.g.
    the demo); ``lease(pool, app_id)`` gives any app's."""

    settings: Settings
    fallback: Mapping[str, Provider]  # built from the settings: the default app's
    keyring: Keyring | None
    quotas: QuotaStore | None = None
    capacity: int = CAPACITY
    refresh_seconds: float = REFRESH_SECONDS
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[int, _AppEntry] = field(default_factory=OrderedDict)

    def __getitem__(self, platform: str) -> Provider:
        return self.fallback[platform]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fallback)

    def __len__(self) -> int:
        return len(self.fallback)

    @contextlib.asynccontextmanager
    async def lease(self, pool: asyncpg.Pool, app_id: int) -> AsyncIterator[Mapping[str, Provider]]:
        """The app's providers by platform, kept open until the block ends."""
        entry = await self._entry(pool, app_id)
        entry.leases += 1
        try:
            if app_id == apps.DEFAULT_APP_ID:
                yield {**self.fallback, **entry.providers}
            else:
                yield entry.providers
        finally:
            entry.leases -= 1
            if entry.retired and entry.leases == 0:
                await _close(entry)

    async def _entry(self, pool: asyncpg.Pool, app_id: int) -> _AppEntry:
        now = self.clock()
        entry = self._entries.get(app_id)
        if entry is not None and now - entry.checked_at < self.refresh_seconds:
            self._entries.move_to_end(app_id)
            return entry
        async with acquire(pool) as conn:
            listed = await apps.app_credentials(conn, app_id=app_id)
            stamps = {c.provider: c.updated_at for c in listed}
            if entry is not None and stamps == entry.stamps:
                entry.checked_at = now
                self._entries.move_to_end(app_id)
                return entry
            fresh = _AppEntry(await self._build(conn, app_id, listed), stamps, now)
        # Another sender of this app may have built its entry while this one awaited: keep
        # one of the same credentials (closing this), or retire what stands there now (not
        # the entry read above, which that sender has retired already), so none is leaked.
        current = self._entries.get(app_id)
        if current is not None and current is not entry and current.stamps == stamps:
            await _close(fresh)
            self._entries.move_to_end(app_id)
            return current
        if current is not None:
            log.info("app %d: its credentials changed, providers rebuilt", app_id)
            await self._retire(current)
        self._entries[app_id] = fresh
        self._entries.move_to_end(app_id)
        while len(self._entries) > self.capacity:
            _, oldest = self._entries.popitem(last=False)
            await self._retire(oldest)
        return fresh

    async def _build(
        self, conn: asyncpg.Connection, app_id: int, listed: list[apps.CredentialListing]
    ) -> dict[str, Provider]:
        if self.keyring is None:  # no credential is stored then (the start-up check)
            return {}
        if not listed:
            return {}
        # The ``app`` label of the providers' outcome counters (FANOUT_METRICS_APP_LABEL).
        key = await apps.app_key(conn, app_id=app_id) or str(app_id)
        built: dict[str, Provider] = {}
        for stored in listed:
            secret = await open_credential(
                conn, app_id=app_id, provider=stored.provider, keyring=self.keyring
            )
            if secret is None:  # removed since it was listed
                continue
            credential = Credential(stored.provider, secret, dict(stored.identity))
            built |= providers_of_credential(self.settings, credential, self.quotas, app=key)
        return built

    async def _retire(self, entry: _AppEntry) -> None:
        entry.retired = True
        if entry.leases == 0:
            await _close(entry)

    async def aclose(self) -> None:
        """Close every provider: the cached apps' and the settings' ones."""
        while self._entries:
            _, entry = self._entries.popitem()
            await _close(entry)
        for provider in {id(p): p for p in self.fallback.values()}.values():
            await provider.aclose()


async def _close(entry: _AppEntry) -> None:
    for provider in entry.providers.values():
        await provider.aclose()
    entry.providers = {}


@contextlib.asynccontextmanager
async def providers_of(
    providers: Mapping[str, Provider], pool: asyncpg.Pool, app_id: int
) -> AsyncIterator[Mapping[str, Provider]]:
    """The providers a batch of ``app_id`` sends with: its app's, or, for a plain mapping
    (the sink, tests), the same providers for every app."""
    if isinstance(providers, AppProviders):
        async with providers.lease(pool, app_id) as leased:
            yield leased
    else:
        yield providers
