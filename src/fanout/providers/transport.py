"""What the push providers share: the transport (HTTP/2, or HTTP/1.1 where a service
speaks nothing else), TLS trust, concurrency and rate limits.

A provider sees a ``Response`` (status, headers, body) or a ``TransportError``, never the
HTTP clients' own types.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Protocol

import httpx

from fanout.config import Settings
from fanout.errors import FanoutError
from fanout.providers.h2 import H2Client, H2Error, InvalidRequest, NotHttp2
from fanout.providers.h2.frames import check_path
from fanout.providers.quota import SharedQuota
from fanout.ratelimit import TokenBucket

log = logging.getLogger("fanout.providers")

# HTTP/1.1 carries one request at a time a connection, so a service that speaks only
# HTTP/1.1 gets a pool of this many kept-alive connections (a browser opens 6 a host).
HTTP1_CONNECTIONS = 32
# A service that cannot be spoken to at all (certificate refused, not TLS, neither
# HTTP/2 nor HTTP/1.1) fails its requests at once for this long, not one handshake each.
UNREACHABLE_SECONDS = 60.0


class Response(Protocol):
    """What a provider reads of an answer."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...


class TransportError(FanoutError):
    """No answer. ``permanent``: the same request will fail the same way (the endpoint
    cannot be spoken to, or the request cannot be sent); otherwise try again later.
    ``unsent``: no connection to the service could be had, so the request never left."""

    def __init__(self, message: str, *, permanent: bool = False, unsent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.unsent = unsent


def tls_context(extra_ca_file: str | None) -> ssl.SSLContext:
    """The system trust store, plus one extra CA (local test servers, corporate proxies)."""
    context = ssl.create_default_context()
    if extra_ca_file:
        context.load_verify_locations(cafile=extra_ca_file)
    return context


@functools.cache
def shared_tls_context(extra_ca_file: str | None) -> ssl.SSLContext:
    """One context for every HTTP/2 transport of a process (their ALPN is the same): a
    context holds its own copy of the system trust store, measured at ~830 KB, so with a
    context per provider a worker serving 256 apps (an APNs production and sandbox
    provider each) held ~420 MB of trust stores alone."""
    return tls_context(extra_ca_file)


class PushTransport:
    """POSTs to push services over HTTP/2 (``H2Client``); an origin whose TLS handshake
    chooses HTTP/1.1 (ALPN) is remembered and spoken to over HTTP/1.1 from then on,
    through a keep-alive pool of its own (httpx)."""

    def __init__(
        self,
        extra_ca_file: str | None = None,
        *,
        name: str = "",
        connections: int = 2,
        request_timeout: float = 30.0,
        ping_seconds: float = 5.0,
        idle_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self.request_timeout = request_timeout
        self.http2 = H2Client(
            shared_tls_context(extra_ca_file),
            connections=connections,
            request_timeout=request_timeout,
            ping_seconds=ping_seconds,
            idle_seconds=idle_seconds,
            label=name,
        )
        self._extra_ca_file = extra_ca_file
        self._http1: dict[str, httpx.AsyncClient] = {}  # origins that chose HTTP/1.1
        self._answered: set[str] = set()  # HTTP/1.1 origins that have answered once
        self._unreachable: dict[str, tuple[str, float]] = {}  # origin -> (why, until)

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Response:
        """POST ``content`` to ``url``; raises TransportError."""
        try:
            origin, path = self.http2.split(url)
            block = self.http2.header_block(headers, len(content))
        except InvalidRequest as exc:
            raise TransportError(f"{self.name}: {exc}", permanent=True) from exc
        if self._unreachable and origin in self._unreachable:
            reason, until = self._unreachable[origin]
            if time.monotonic() < until:
                raise TransportError(reason, permanent=True)
            del self._unreachable[origin]
        http1 = self._http1.get(origin)
        if http1 is None:
            try:
                return await self.http2.send(origin, path, block, content)
            except NotHttp2 as exc:
                http1 = self._speak_http1(origin, exc.protocol)
            except InvalidRequest as exc:
                raise TransportError(str(exc), permanent=True) from exc
            except H2Error as exc:
                if exc.permanent:
                    # The same words for this request as for those refused after it.
                    reason = f"{origin} cannot be spoken to: {exc}"
                    self._give_up(origin, reason)
                    raise TransportError(reason, permanent=True) from exc
                raise TransportError(str(exc), unsent=exc.unsent) from exc
        return await self._post_http1(http1, origin, url, path, content, headers)

    def _speak_http1(self, origin: str, protocol: str | None) -> httpx.AsyncClient:
        http1 = self._http1.get(origin)
        if http1 is None:
            chose = f"chose {protocol}" if protocol else "chose no protocol"
            log.info("%s %s by ALPN: HTTP/1.1 to it from now on", origin, chose)
            logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per push
            http1 = self._http1[origin] = httpx.AsyncClient(
                # A context of its own: httpx sets its own ALPN protocols on the one it gets.
                verify=tls_context(self._extra_ca_file),
                http1=True,
                http2=False,
                limits=httpx.Limits(
                    max_connections=HTTP1_CONNECTIONS,
                    max_keepalive_connections=HTTP1_CONNECTIONS,
                    keepalive_expiry=60,
                ),
                timeout=httpx.Timeout(self.request_timeout),
                trust_env=False,  # as for HTTP/2: our own trust store, no proxy variables
            )
        return http1

    async def _post_http1(
        self,
        client: httpx.AsyncClient,
        origin: str,
        url: str,
        path: str,
        content: bytes,
        headers: dict[str, str],
    ) -> Response:
        try:
            check_path(path)  # the header checks were made with the header block
            response = await client.post(url, content=content, headers=headers)
        except ValueError as exc:  # check_path's InvalidHeader, httpx's InvalidURL
            raise TransportError(f"{self.name}: not sent: {exc}", permanent=True) from exc
        except httpx.TimeoutException as exc:
            raise TransportError(f"no answer in {self.request_timeout:g}s (HTTP/1.1)") from exc
        except httpx.RemoteProtocolError as exc:
            if origin not in self._answered and "disconnected" not in str(exc):
                reason = f"{origin} speaks neither HTTP/2 nor HTTP/1.1: {exc}"
                self._give_up(origin, reason)
                raise TransportError(reason, permanent=True) from exc
            raise TransportError(f"HTTP/1.1 to {origin}: {exc}") from exc
        except httpx.HTTPError as exc:
            if _caused_by(exc, ssl.SSLCertVerificationError):
                reason = f"{origin} cannot be spoken to: {exc}"
                self._give_up(origin, reason)
                raise TransportError(reason, permanent=True) from exc
            raise TransportError(f"HTTP/1.1 to {origin}: {exc or type(exc).__name__}") from exc
        self._answered.add(origin)
        return response

    def _give_up(self, origin: str, reason: str) -> None:
        if origin not in self._unreachable:
            log.warning("%s: %s; its requests fail for %gs", self.name, reason, UNREACHABLE_SECONDS)
        self._unreachable[origin] = (reason, time.monotonic() + UNREACHABLE_SECONDS)

    async def aclose(self) -> None:
        await self.http2.aclose()
        for client in self._http1.values():
            await client.aclose()
        self._http1.clear()


def push_transport(settings: Settings, name: str) -> PushTransport:
    """One transport per provider: every request multiplexed over a few long-lived
    connections per push service, renewed after GOAWAY or a lost connection."""
    return PushTransport(
        settings.tls_ca_file,
        name=name,
        connections=settings.provider_connections,
        request_timeout=settings.provider_request_timeout,
        ping_seconds=settings.provider_ping_seconds,
        idle_seconds=settings.provider_idle_seconds,
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class AdaptiveLimit:
    """Concurrency plus a rate limit that halves when the service says 429 and recovers.

    Shared by every coroutine of a worker that sends through one provider. The rate
    climbs back by a tenth of the ceiling every second without a 429.
    """

    def __init__(self, rate: float, concurrency: int) -> None:
        # The credential's budget shared with every other worker (build_providers sets it
        # when the provider has a quota): taken after this worker's own limit.
        self.quota: SharedQuota | None = None
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
                break
            await asyncio.sleep(wait)
        if self.quota is not None:
            try:
                await self.quota.take()
            except BaseException:
                self._slots.release()
                raise

    async def __aexit__(self, *exc: object) -> None:
        self._slots.release()

    def slow_down(self, retry_after: float | None) -> None:
        """A 429: halve the rate, and wait out Retry-After before the next request."""
        self._bucket.rate = max(1.0, self._bucket.rate / 2)
        self._last_change = time.monotonic()
        if retry_after:
            self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
            if self.quota is not None:
                self.quota.pause(retry_after)  # every worker on this credential waits too

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
