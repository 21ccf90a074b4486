"""One HTTP/2 connection over TLS: the asyncio shell around ``codec.ClientCodec``.

It keeps what the codec cannot: the socket, the futures requests wait on, and time.
Everything framed in one turn of the event loop goes out as one TLS write. One timer a
connection watches both deadlines: a request unanswered past the request timeout fails,
and a connection silent while requests wait is sent a PING after half of
``ping_seconds`` and given up as dead if still silent at the end (an idle one is pinged
after ``IDLE_PING_SECONDS``, and closed after ``idle_seconds`` without a request). A
timer per request (``asyncio.timeout``) cost 12% of a delivery worker's throughput.
Every request has the same timeout, so the requests waiting, kept in the order they were
sent, are also in the order of their deadlines: the timer is set for the first one's (or
the PING schedule, whichever comes first), and a tick looks at no more than the requests
it fails.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import cast

from fanout.errors import FanoutError
from fanout.metrics import PROVIDER_DEAD_CONNECTIONS, PROVIDER_GOAWAYS
from fanout.providers.h2.codec import ClientCodec
from fanout.providers.h2.events import (
    ConnectionTerminated,
    GoAway,
    Response,
    SettingsChanged,
    StreamReset,
)
from fanout.providers.h2.frames import CANCEL, NO_ERROR, error_name

log = logging.getLogger("fanout.providers.h2")

# An idle connection is pinged this often: pushy (a Java APNs client) does the same
# after a minute idle; more often, and a service may take the pings for abuse.
IDLE_PING_SECONDS = 60.0
# What a TLS handshake failing this way says: the service is not a TLS server, or
# refuses every protocol we offer. Trying again will not change that.
_TLS_FOR_GOOD = frozenset(
    {"WRONG_VERSION_NUMBER", "TLSV1_ALERT_NO_APPLICATION_PROTOCOL", "UNSUPPORTED_PROTOCOL"}
)


class H2Error(FanoutError):
    """A request failed in transport. ``unsent``: the service never processed it (not
    sent, or GOAWAY or REFUSED_STREAM excluded it), so sending it again cannot deliver it
    twice. ``permanent``: trying again will fail the same way (certificate refused, not a
    TLS or HTTP/2 server, a header HTTP/2 cannot carry)."""

    def __init__(self, message: str, *, unsent: bool = False, permanent: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent
        self.permanent = permanent


class InvalidRequest(H2Error):
    """A request HTTP/2 cannot carry (a CR, LF or NUL in a header, not an https URL):
    refused before anything is sent; permanent for this request, not for its origin."""

    def __init__(self, message: str) -> None:
        super().__init__(message, unsent=True, permanent=True)


class NotHttp2(H2Error):
    """The service chose another protocol by ALPN: ``protocol`` is "http/1.1" or None."""

    def __init__(self, message: str, protocol: str | None) -> None:
        super().__init__(message, unsent=True)
        self.protocol = protocol


class H2Connection(asyncio.Protocol):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        ping_seconds: float,
        idle_seconds: float = 0.0,
        label: str = "",
        on_change: Callable[[H2Connection], None] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.ping_seconds = ping_seconds
        # Closed (GOAWAY) after this long without a request; 0: kept for as long as the
        # service keeps it. A worker serving many apps keeps a connection only for those
        # pushing now, not one per app it ever pushed for.
        self.idle_seconds = idle_seconds
        self.label = label  # the provider, for metrics
        authority = f"[{host}]" if ":" in host else host
        self.codec = ClientCodec(authority if port == 443 else f"{authority}:{port}")
        self.closed = False  # takes no new requests
        self.lost = False  # the socket is gone
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        # stream id -> (its answer, its deadline); in the order sent, so of deadlines
        self._pending: dict[int, tuple[asyncio.Future[Response], float]] = {}
        self._flush_scheduled = False
        self._settled: asyncio.Future[None] = self._loop.create_future()
        self._end_reason = ""
        self._goaway_seen = False
        self._last_heard = self._last_request = self._loop.time()
        self._ping_sent: float | None = None
        self._pings = 0
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<H2Connection {self.host}:{self.port} load={self.load} closed={self.closed}>"

    async def open(self, context: ssl.SSLContext) -> None:
        """Connect, check ALPN chose h2, and wait for the server's SETTINGS."""
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout):
                await self._loop.create_connection(
                    lambda: self, self.host, self.port, ssl=context, server_hostname=self.host
                )
        except ssl.SSLCertVerificationError as exc:
            message = f"TLS: {where}'s certificate refused: {exc.verify_message}"
            raise H2Error(message, unsent=True, permanent=True) from exc
        except ssl.SSLError as exc:
            message = f"TLS with {where} failed: {exc.reason or exc}"
            raise H2Error(message, unsent=True, permanent=exc.reason in _TLS_FOR_GOOD) from exc
        except (OSError, TimeoutError) as exc:
            problem = str(exc) or f"no TLS connection in {self.timeout:g}s"
            raise H2Error(f"cannot connect to {where}: {problem}", unsent=True) from exc
        assert self._transport is not None
        ssl_object = self._transport.get_extra_info("ssl_object")
        protocol = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if protocol != "h2":
            self.closed = True
            self._transport.close()
            raise NotHttp2(f"{where} chose {protocol or 'no protocol'} by ALPN", protocol)
        self.codec.initiate()
        self._flush()
        try:
            async with asyncio.timeout(self.timeout):
                await self._settled  # the server's first SETTINGS: how many streams it takes
        except TimeoutError as exc:
            self._abort(f"no SETTINGS from {where} in {self.timeout:g}s")
            raise H2Error(f"{where} did not start HTTP/2", unsent=True) from exc
        except asyncio.CancelledError:
            self._abort("cancelled while opening")
            raise
        if not self.codec.settled:
            # A server that chose h2 and then spoke something else will do so again.
            raise H2Error(
                f"{where} did not start HTTP/2: {self._end_reason}",
                unsent=True,
                permanent=self.codec.terminated,
            )
        self._arm(self._idle_until(self._loop.time() + IDLE_PING_SECONDS))

    @property
    def load(self) -> int:
        return len(self._pending)

    def free_slots(self) -> int:
        """Streams this connection may open now (closed: none; the pool asks often)."""
        return 0 if self.closed else self.codec.peer_max_streams - len(self._pending)

    # --- requests ------------------------------------------------------------------

    def start(
        self, path: str, header_block: bytes, body: bytes
    ) -> tuple[int, asyncio.Future[Response]]:
        """Send a request now; its answer resolves the future. Raises InvalidHeader or
        NoStreamAvailable (from the codec) with nothing sent."""
        stream_id = self.codec.send_request(path, header_block, body)
        future: asyncio.Future[Response] = self._loop.create_future()
        now = self._last_request = self._loop.time()
        deadline = now + self.timeout
        if not self._pending:  # busy from now: silence is watched at the busy pace, and
            # this request's deadline, which may come first (a timeout below ping_seconds/2)
            self._arm(min(max(now, self._last_heard + self.ping_seconds / 2), deadline))
        self._pending[stream_id] = (future, deadline)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self.codec.draining:  # the last stream id: the next request needs a new connection
            self._close_for_new()
        return stream_id, future

    def cancel(self, stream_id: int) -> None:
        """The caller is gone: reset the stream, freeing its slot."""
        if self._pending.pop(stream_id, None) is not None and self.codec.reset_stream(stream_id):
            self._schedule_flush()
            self._changed()

    def _flush(self) -> None:
        """Everything framed in this turn of the event loop goes out as one TLS write."""
        self._flush_scheduled = False
        data = self.codec.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # --- what the server sends -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(asyncio.Transport): uvloop's TLS transport derives from object
        # alone, and that assertion failing here closed every connection under uvloop.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_heard = self._loop.time()
        changed = False
        pending = self._pending
        for event in self.codec.receive(data):
            if type(event) is Response:
                entry = pending.pop(event.stream_id, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_result(event)
                changed = True
            elif type(event) is StreamReset:
                self._fail(event.stream_id, H2Error(event.reason, unsent=event.unsent))
                changed = True
            elif type(event) is SettingsChanged:
                if event.first and not self._settled.done():
                    self._settled.set_result(None)
                changed = True
            elif type(event) is GoAway:
                self._on_goaway(event)
                changed = True
            elif type(event) is ConnectionTerminated:
                self._on_terminated(event)
                changed = True
            # PingAcknowledged: hearing anything at all already proves the connection lives.
        if self.codec.wants_to_send():  # acknowledgements, WINDOW_UPDATE, resumed DATA
            self._schedule_flush()
        if changed:
            if self.closed and not self._pending:
                self._shut()
            self._changed()

    def _on_goaway(self, event: GoAway) -> None:
        """Logged and counted once a connection (a server may send two: a warning with
        the highest stream id, then the real last one); unprocessed streams are unsent."""
        code = error_name(event.error_code)
        if not self._goaway_seen:
            self._goaway_seen = True
            PROVIDER_GOAWAYS.labels(self.label, code).inc()
            debug = event.debug_data[:200].decode(errors="replace")
            log.log(
                logging.INFO if event.error_code == NO_ERROR else logging.WARNING,
                "%s:%d sent GOAWAY %s (last stream %d; %d not processed, sent again): %r",
                self.host,
                self.port,
                code,
                event.last_stream_id,
                len(event.unprocessed),
                debug,
            )
        for stream_id in event.unprocessed:
            self._fail(stream_id, H2Error(f"GOAWAY {code} before this stream", unsent=True))
        self.closed = True

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        log.warning("%s:%d broke HTTP/2: %s", self.host, self.port, event.reason)
        self._end_reason = event.reason
        self.closed = True
        for stream_id in event.stream_ids:
            self._fail(stream_id, H2Error(f"protocol error from the server: {event.reason}"))
        self._flush()  # our GOAWAY with the error code, before the socket closes
        if self._transport is not None:
            self._transport.close()

    def _fail(self, stream_id: int, error: H2Error) -> None:
        entry = self._pending.pop(stream_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(error)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    # --- time: deadlines and liveness ----------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.lost:
            return
        now = self._loop.time()
        half = self.ping_seconds / 2
        if self._ping_sent is not None:
            if self._last_heard > self._ping_sent:
                self._ping_sent = None
            elif now - self._ping_sent >= half:
                self._dead(f"no answer to PING in {half:g}s: connection dead")
                return
        if self._pending:
            self._expire(now)
        elif self.idle_seconds and now - self._last_request >= self.idle_seconds:
            self._close_for_new()
            self._shut()
            return
        silence = half if self._pending else IDLE_PING_SECONDS
        if self._ping_sent is None and now - self._last_heard >= silence:
            self._ping_sent = now
            self._pings += 1
            self.codec.ping(self._pings.to_bytes(8, "big"))
            self._schedule_flush()
        when = self._last_heard + silence if self._ping_sent is None else self._ping_sent + half
        if self._pending:  # the first is the oldest: its deadline is the next one
            when = min(when, next(iter(self._pending.values()))[1])
        else:
            when = self._idle_until(when)
        self._timer = self._loop.call_at(max(when, now + 0.01), self._tick)

    def _idle_until(self, when: float) -> float:
        """``when``, or the moment this connection has been idle long enough to close."""
        if self.idle_seconds:
            return min(when, self._last_request + self.idle_seconds)
        return when

    def _expire(self, now: float) -> None:
        """Fail the requests the server has not answered in time, and tell it so."""
        late = []
        for stream_id, (_, deadline) in self._pending.items():
            if deadline > now:
                break  # and so are all those sent after it
            late.append(stream_id)
        for stream_id in late:
            self.codec.reset_stream(stream_id, CANCEL)
            self._fail(stream_id, H2Error(f"no answer in {self.timeout:g}s"))
        if late:
            self._schedule_flush()
            self._changed()

    def _dead(self, reason: str) -> None:
        # Not sent again here (the service may have received them): each fails to its
        # caller, as a transport failure that may succeed later (the delivery stage's
        # retry batch), unlike GOAWAY's unprocessed streams, which are unsent.
        log.warning(
            "%s:%d: %s; its %d requests waiting for an answer fail, to be retried by their "
            "batches (not resent on a new connection: the service may have received them)",
            self.host,
            self.port,
            reason,
            self.load,
        )
        PROVIDER_DEAD_CONNECTIONS.labels(self.label).inc()
        self._abort(reason)

    # --- the end -------------------------------------------------------------------

    def _close_for_new(self) -> None:
        self.closed = True
        self._changed()

    def _shut(self) -> None:
        """Closed to new requests and none left: say GOAWAY and close."""
        if self._transport is not None and not self._transport.is_closing():
            self.codec.close(NO_ERROR)
            self._flush()
            self._transport.close()

    def _abort(self, reason: str) -> None:
        self._end_reason = reason
        if self._transport is not None:
            self._transport.abort()
        self.connection_lost(H2Error(reason))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reason = self._end_reason or (f"connection lost: {exc}" if exc else "connection lost")
        self._end_reason = reason
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(H2Error(reason))
        if not self._settled.done():
            self._settled.set_result(None)  # open() sees the connection never settled
        self._changed()

    async def close(self) -> None:
        self.closed = True
        self._shut()
        await asyncio.sleep(0)
