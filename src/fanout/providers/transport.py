"""What the HTTP/2 providers share: the client, TLS trust, concurrency and rate limits."""

from __future__ import annotations

import asyncio
import ssl
import time

from fanout.providers.h2.client import H2Client
from fanout.ratelimit import TokenBucket


def tls_context(extra_ca_file: str | None) -> ssl.SSLContext:
    """The system trust store, plus one extra CA (local test servers, corporate proxies)."""
    context = ssl.create_default_context()
    if extra_ca_file:
        context.load_verify_locations(cafile=extra_ca_file)
    return context


def http2_client(extra_ca_file: str | None, request_timeout: float = 30.0) -> H2Client:
    """One client per provider: every request multiplexed over a few long-lived
    connections per host, renewed after GOAWAY or a lost connection."""
    return H2Client(tls_context(extra_ca_file), request_timeout=request_timeout)


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
