"""What the push providers share: the transport (HTTP/2), TLS trust, concurrency and
rate limits.

A provider sees a ``Response`` (status, headers, body) or a ``TransportError``, never the
HTTP clients' own types.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from typing import Protocol

from fanout.config import Settings
from fanout.providers.h2 import H2Client, H2Error, InvalidRequest
from fanout.ratelimit import TokenBucket


class Response(Protocol):
    """What a provider reads of an answer."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...


class TransportError(Exception):
    """No answer. ``permanent``: the same request will fail the same way (HTTP/2 cannot
    carry it); otherwise try again later."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def tls_context(extra_ca_file: str | None) -> ssl.SSLContext:
    """The system trust store, plus one extra CA (local test servers, corporate proxies)."""
    context = ssl.create_default_context()
    if extra_ca_file:
        context.load_verify_locations(cafile=extra_ca_file)
    return context


class PushTransport:
    """POSTs to push services over HTTP/2 (``H2Client``)."""

    def __init__(
        self,
        extra_ca_file: str | None = None,
        *,
        name: str = "",
        connections: int = 2,
        request_timeout: float = 30.0,
        ping_seconds: float = 5.0,
    ) -> None:
        self.name = name
        self.request_timeout = request_timeout
        self.http2 = H2Client(
            tls_context(extra_ca_file),
            connections=connections,
            request_timeout=request_timeout,
            ping_seconds=ping_seconds,
            label=name,
        )

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Response:
        """POST ``content`` to ``url``; raises TransportError."""
        try:
            origin, path = self.http2.split(url)
            block = self.http2.header_block(headers, len(content))
        except InvalidRequest as exc:
            raise TransportError(f"{self.name}: {exc}", permanent=True) from exc
        try:
            return await self.http2.send(origin, path, block, content)
        except InvalidRequest as exc:
            raise TransportError(str(exc), permanent=True) from exc
        except H2Error as exc:
            raise TransportError(str(exc)) from exc

    async def aclose(self) -> None:
        await self.http2.aclose()


def push_transport(settings: Settings, name: str) -> PushTransport:
    """One transport per provider: every request multiplexed over a few long-lived
    connections per push service, renewed after GOAWAY or a lost connection."""
    return PushTransport(
        settings.tls_ca_file,
        name=name,
        connections=settings.provider_connections,
        request_timeout=settings.provider_request_timeout,
        ping_seconds=settings.provider_ping_seconds,
    )


class AdaptiveLimit:
    """Concurrency plus a rate limit that halves when the service says 429 and recovers.

    Shared by every coroutine of a worker that sends through one provider. The rate
    climbs back by a tenth of the ceiling every second without a 429.
    """

    def __init__(self, rate: float, concurrency: int) -> None:
        self.ceiling = rate
        self.concurrency = concurrency
        self._bucket = TokenBucket(rate, max(1.0, rate / 10))
        self._slots = asyncio.Semaphore(concurrency)
        self._paused_until = 0.0
        self._last_change = time.monotonic()

    @property
    def rate(self) -> float:
        return self._bucket.rate

    async def __aenter__(self) -> None:
        await self._slots.acquire()
        self._recover()
        while True:
            pause = self._paused_until - time.monotonic()
            wait = max(pause, self._bucket.try_take())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def __aexit__(self, *exc: object) -> None:
        self._slots.release()

    def slow_down(self, retry_after: float | None) -> None:
        """A 429: halve the rate, and wait out Retry-After before the next request."""
        self._bucket.rate = max(1.0, self._bucket.rate / 2)
        self._last_change = time.monotonic()
        if retry_after:
            self._paused_until = max(self._paused_until, time.monotonic() + retry_after)

    def _recover(self) -> None:
        now = time.monotonic()
        if self._bucket.rate < self.ceiling and now - self._last_change >= 1.0:
            self._bucket.rate = min(self.ceiling, self._bucket.rate + self.ceiling / 10)
            self._last_change = now


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (only the delta-seconds form is used by push services)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
