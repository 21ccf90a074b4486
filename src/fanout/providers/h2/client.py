"""An HTTP/2 client written for push traffic: many small POSTs multiplexed over a few
long-lived TLS connections per push service.

Why not a library. Measured here against the local APNs emulator:
- httpx's HTTP/2 (httpcore) sent ~480 requests/s, and with 500 requests in flight a
  quarter failed with WriteError (each one a push that may have been delivered, then
  retried: a duplicate).
- A client on the ``h2`` state machine reached ~2,200-3,500 requests/s for a full core
  (129-343 µs of CPU a request): py-spy put ~40% of it in ``send_headers`` (HPACK,
  header validation) and most of the rest in h2's per-frame event machinery and one TLS
  write per request.
This one is three layers: ``frames`` (the wire vocabulary, HPACK literals), ``codec``
(one connection's protocol state, sans I/O, tested against ``h2`` as the server; what it
reports is in ``events``) and
``connection`` (the asyncio shell: socket, futures, timers). Here, per origin, a pool of
up to ``connections`` of them: requests go to the least busy connection with a free
stream under its server's MAX_CONCURRENT_STREAMS; a connection closed by GOAWAY or lost
is replaced; requests the server did not process are sent again on another. While none
can be opened, the senders share one try at a time (``REOPEN``: 1, 2, 4 … 30 s apart, each
up to half less at random) and wait for it up to their request timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl

from fanout.providers.h2.codec import NoStreamAvailable
from fanout.providers.h2.connection import H2Connection, H2Error, InvalidRequest, NotHttp2
from fanout.providers.h2.events import Response
from fanout.providers.h2.frames import InvalidHeader, encode_headers
from fanout.retry import Backoff

log = logging.getLogger("fanout.providers.h2")

# Connections a request the service never processed (GOAWAY, REFUSED_STREAM) is offered
# to. A service whose GOAWAY quota is below the requests in flight excludes some of them
# again and again: with a quota of 150 and 500 in flight, 3 left 100 of 1,000 unsent.
ATTEMPTS = 5
# A connection that failed to open is tried again after 1, 2, 4 … 30 s, once for every
# sender of the origin, not once a request: while a service was down, every request tried
# a connection of its own and failed at once (3,746 in 73 ms), each a try of its device
# spent. Senders with no open connection wait for the next try, up to their timeout. Each
# wait is up to half less at random ("equal jitter"): a worker holds a client per app and
# provider, every one of them to the same service, and a fleet of workers as many again;
# without it all of them would connect in the same instant when the service comes back.
REOPEN = Backoff(first=1.0, cap=30.0, jitter=0.5)


class _Pool:
    """The connections to one origin, and the requests waiting for a free stream."""

    def __init__(self, client: H2Client, host: str, port: int) -> None:
        self.client = client
        self.host, self.port = host, port
        self.connections: list[H2Connection] = []  # open to new requests
        self.live: set[H2Connection] = set()  # every connection not yet lost
        self.opening: asyncio.Task[H2Connection] | None = None
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.failures = 0  # openings failed in a row
        self.failure: H2Error | None = None  # why the last of them failed
        self.reopen_at = 0.0  # loop time before which no connection is opened

    def pick(self) -> H2Connection | None:
        """The least busy connection with a free stream; opens another while the pool
        is below its size and every connection is busy (streams spread across them)."""
        best, best_load = None, 0
        for connection in self.connections:
            load = connection.load
            if (best is None or load < best_load) and connection.free_slots() > 0:
                best, best_load = connection, load
        if (
            self.opening is None
            and len(self.connections) < self.client.connections
            and (best is None or best_load)
            and asyncio.get_running_loop().time() >= self.reopen_at
        ):
            self._open()
        return best

    async def wait(self) -> H2Connection:
        """A connection with a free stream, once there is one. While none is open, the
        senders share one opening at a time, on the REOPEN schedule after a failed one,
        and each waits up to its request timeout; then it fails with the last reason."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.client.request_timeout
        opened = 0
        while True:
            if self.connections:  # all busy: woken when a stream ends or one closes
                waiter = loop.create_future()
                self.waiters.append(waiter)
                await waiter
            elif self.opening is not None:
                opening = self.opening
                # asyncio.wait, not awaiting the task: it yields even when the task is done
                # and its done-callback (_opened) has yet to run (else a burst of senders
                # spun through ATTEMPTS and failed a request on every new client), and it
                # does not raise a failure every sender would share.
                await asyncio.wait([opening], timeout=max(0.0, deadline - loop.time()))
                if not opening.done():
                    raise self._no_connection()
                if opening.cancelled():  # the client is closing
                    raise H2Error(f"{self.host}:{self.port}: client closed", unsent=True)
                error = opening.exception()
                if error is None:
                    opened += 1
                    if opened > ATTEMPTS:  # each one closed (GOAWAY) as soon as it opened
                        where = f"{self.host}:{self.port}"
                        raise H2Error(f"no connection to {where} stayed open", unsent=True)
                elif _final(error):
                    raise error  # trying again will not help: the transport decides
            elif loop.time() >= deadline:
                raise self._no_connection()
            else:  # the last opening failed: the next is for whoever wakes first after this
                await asyncio.sleep(max(0.0, min(self.reopen_at, deadline) - loop.time()))
            connection = self.pick()
            if connection is not None:
                return connection

    def _no_connection(self) -> H2Error:
        """A request's timeout over with no connection open (unsent: try it again later)."""
        if self.failure is None:  # the first opening is still under way
            where = f"{self.host}:{self.port}"
            timeout = self.client.request_timeout
            return H2Error(f"cannot connect to {where} in {timeout:g}s", unsent=True)
        again = max(0.0, self.reopen_at - asyncio.get_running_loop().time())
        next_try = "another under way" if self.opening else f"the next in {again:.1f}s"
        return H2Error(f"{self.failure} ({self.failures} tries in a row; {next_try})", unsent=True)

    def _open(self) -> None:
        connection = H2Connection(
            self.host,
            self.port,
            timeout=self.client.request_timeout,
            ping_seconds=self.client.ping_seconds,
            idle_seconds=self.client.idle_seconds,
            label=self.client.label,
            on_change=self.changed,
        )
        self.live.add(connection)
        self.opening = asyncio.create_task(self._connect(connection))
        self.opening.add_done_callback(self._opened)

    async def _connect(self, connection: H2Connection) -> H2Connection:
        await connection.open(self.client.context)
        return connection

    def _opened(self, task: asyncio.Task[H2Connection]) -> None:
        self.opening = None
        error = None if task.cancelled() else task.exception()
        where = f"{self.host}:{self.port}"
        if error is None and not task.cancelled():
            if self.failures and not self.connections:
                log.info("connected to %s again after %d failed tries", where, self.failures)
            self.failures, self.failure = 0, None
            connection = task.result()
            if not connection.closed:
                self.connections.append(connection)
        else:
            self.failures += 1
            if isinstance(error, H2Error):
                self.failure = error
            delay = self.client.reopen.delay(self.failures)
            self.reopen_at = asyncio.get_running_loop().time() + delay
            if self.connections:  # the others carry on; requests waiting on them still wait
                log.info(
                    "another connection to %s failed (%s); next try in %.1fs", where, error, delay
                )
            elif error is not None and not _final(error):
                log.warning(
                    "%s; next try in %.1fs, requests wait for it up to their %gs timeout",
                    error,
                    delay,
                    self.client.request_timeout,
                )
        self._wake(len(self.waiters))

    def changed(self, connection: H2Connection) -> None:
        """A connection's streams ended, its limits changed, or it closed."""
        if connection.closed and connection in self.connections:
            self.connections.remove(connection)
            self._wake(1)  # someone must open its replacement
        if connection.lost:
            self.live.discard(connection)
        if self.waiters:
            self._wake(sum(c.free_slots() for c in self.connections))

    def _wake(self, count: int) -> None:
        while count > 0 and self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    async def aclose(self) -> None:
        if self.opening is not None:
            self.opening.cancel()
        for connection in list(self.live):
            with contextlib.suppress(Exception):
                await connection.close()
        self.connections.clear()


def _final(error: BaseException) -> bool:
    """An opening's failure every sender gets at once: another try will not help (certificate
    refused, not TLS, HTTP/1.1 chosen: the transport decides), or not a transport failure."""
    return not isinstance(error, H2Error) or error.permanent or isinstance(error, NotHttp2)


class H2Client:
    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        connections: int = 2,
        request_timeout: float = 30.0,
        ping_seconds: float = 5.0,
        idle_seconds: float = 0.0,
        label: str = "",
        reopen: Backoff = REOPEN,
    ) -> None:
        # h2 first; a service that picks HTTP/1.1 gets NotHttp2 (transport.py then
        # speaks HTTP/1.1 to it), and one that can pick neither ends the handshake.
        context.set_alpn_protocols(["h2", "http/1.1"])
        self.context = context
        self.connections = connections
        # Connecting, or a request's answer, taking longer than this fails as H2Error: a
        # push service that goes silent must not hold a batch (and its lease) for ever.
        self.request_timeout = request_timeout
        self.ping_seconds = ping_seconds
        self.idle_seconds = idle_seconds  # a connection unused this long is closed
        self.label = label
        self.reopen = reopen  # when a connection that failed to open is tried again
        self._pools: dict[str, _Pool] = {}
        self._origins: dict[str, tuple[str, int]] = {}
        self._header_blocks: dict[tuple[tuple[str, str], ...], bytes] = {}

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Response:
        origin, path = self.split(url)
        return await self.send(origin, path, self.header_block(headers, len(content)), content)

    async def send(self, origin: str, path: str, header_block: bytes, body: bytes) -> Response:
        """POST to ``origin`` (from ``split``); ``header_block`` from ``header_block``."""
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self, *self._origins[origin])
        for attempt in range(1, ATTEMPTS + 1):
            connection = pool.pick() or await pool.wait()
            try:
                stream_id, answer = connection.start(path, header_block, body)
            except InvalidHeader as exc:
                raise InvalidRequest(f"not sent: {exc}") from exc
            except NoStreamAvailable:  # cannot happen after pick(); try another
                continue
            try:
                return await answer
            except asyncio.CancelledError:
                connection.cancel(stream_id)
                raise
            except NotHttp2:
                raise
            except H2Error as exc:
                if not exc.unsent or exc.permanent or attempt == ATTEMPTS:
                    raise
        raise H2Error(f"no connection to {origin} took the request", unsent=True)

    def split(self, url: str) -> tuple[str, str]:
        """("https://host:port", "/path?query"); origins are parsed once and remembered.
        A URL that is not https is an InvalidRequest (push services are TLS only)."""
        if not url.startswith("https://"):
            raise InvalidRequest(f"not an https URL: {url[:80]!r}")
        slash = url.find("/", 8)
        origin, path = (url, "/") if slash < 0 else (url[:slash], url[slash:])
        if origin not in self._origins:
            authority = origin[8:]
            host, _, port = authority.rpartition(":")
            if not host or not port.isdigit() or (host.count(":") and not host.endswith("]")):
                host, port = authority, "443"
            host = host.removeprefix("[").removesuffix("]")
            if not host or "@" in host or not 0 < int(port) < 65536:
                raise InvalidRequest(f"not an https URL: {url[:80]!r}")
            self._origins[origin] = (host, int(port))
        return origin, path

    def header_block(self, headers: dict[str, str], length: int) -> bytes:
        """The HPACK of a request's headers, checked once: most requests repeat a few
        header sets. A header HTTP/2 forbids (CR, LF or NUL in a value…) raises
        InvalidRequest, nothing sent."""
        key = (*headers.items(), ("content-length", str(length)))
        block = self._header_blocks.get(key)
        if block is None:
            try:
                block = encode_headers((k.lower(), v) for k, v in key)
            except InvalidHeader as exc:
                raise InvalidRequest(f"not sent: {exc}") from exc
            if len(self._header_blocks) > 256:
                self._header_blocks.clear()
            self._header_blocks[key] = block
        return block

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
