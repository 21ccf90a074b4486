"""A small HTTP/2 server over TLS on the ``h2`` library, serving the emulators' ASGI apps.

It does what hypercorn and granian cannot be told to do, for the tests and for
``apple_like`` runs: change SETTINGS on a live connection, send GOAWAY gracefully (the
streams it accepted are answered, as APNs and nginx do; hypercorn's GOAWAY drops them),
behave as APNs does with provider tokens, and go silent without closing (``blackhole``).
It is written for loopback tests, not for load: granian serves the benchmarks.

``apple_like``: APNs takes one stream at a time on a new connection until a request with
a valid provider token has succeeded, then 1,000; a refused provider token gets its 403
and then GOAWAY with ``{"reason": ...}`` as debug data, and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import orjson
from hyperframe.frame import GoAwayFrame

from fanout.local.emulators.tls import TestCertificates

MAX_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
APPLE_FIRST_STREAMS, APPLE_STREAMS = 1, 1000
_TOKEN_REFUSALS = {b"InvalidProviderToken", b"ExpiredProviderToken", b"MissingProviderToken"}


class H2Server:
    """What the tests steer and observe; ``url`` once serving."""

    def __init__(
        self,
        app: Any,
        *,
        max_concurrent_streams: int = 1000,
        requests_per_connection: int | None = None,
        apple_like: bool = False,
    ) -> None:
        self.app = app
        self.max_concurrent_streams = APPLE_FIRST_STREAMS if apple_like else max_concurrent_streams
        self.requests_per_connection = requests_per_connection
        self.apple_like = apple_like
        self.url = ""
        self.listener: asyncio.Server | None = None  # close it and new connections fail
        self.connections: list[_Connection] = []  # every connection ever accepted
        self.pings = 0  # PINGs received (not acknowledgements)
        self.most_streams = 0  # the most requests in progress at once on one connection
        self.goaways_sent: list[tuple[int, bytes]] = []  # (error code, debug data)

    def blackhole(self) -> None:
        """The connections open now stop reading and writing; their sockets stay open,
        as when a network path dies without a reset. New connections work."""
        for connection in self.connections:
            connection.silent = True

    def goaway(self, error_code: int = 0, debug: bytes = b"") -> None:
        """GOAWAY on every open connection; the streams they accepted are still answered."""
        for connection in self.connections:
            connection.goaway(error_code, debug)

    def update_settings(self, settings: dict[int, int]) -> None:
        for connection in self.connections:
            connection.update_settings(settings)


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        self.silent = False
        self.requests = 0
        self.last_stream: int | None = None  # from our GOAWAY: later streams are ignored
        self.requests_in: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport
        self.server.connections.append(self)
        self.h2.local_settings = h2.settings.Settings(
            client=False, initial_values={MAX_STREAMS: self.server.max_concurrent_streams}
        )
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.silent and self.transport and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.silent:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests_in[event.stream_id] = (list(event.headers), bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self.requests_in[event.stream_id][1].extend(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.start(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                if (task := self.tasks.pop(event.stream_id, None)) is not None:
                    task.cancel()
            elif isinstance(event, h2.events.PingReceived):
                self.server.pings += 1
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.close()
        self.flush()

    def start(self, stream_id: int) -> None:
        if self.last_stream is not None and stream_id > self.last_stream:
            return  # after our GOAWAY: not processed, as GOAWAY told the client
        self.requests += 1
        limit = self.server.requests_per_connection
        if limit is not None and self.requests >= limit and self.last_stream is None:
            self.goaway(0, b"", last_stream=stream_id)  # later ones, even in this read: not
        self.tasks[stream_id] = asyncio.create_task(self.answer(stream_id))
        self.server.most_streams = max(self.server.most_streams, len(self.tasks))

    async def answer(self, stream_id: int) -> None:
        headers, body = self.requests_in.pop(stream_id)
        fields = dict(headers)
        path = fields.get(b":path", b"/")
        raw_path, _, query = path.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "2",
            "method": fields.get(b":method", b"GET").decode(),
            "scheme": "https",
            "path": raw_path.decode(),
            "raw_path": raw_path,
            "query_string": query,
            "headers": [(k, v) for k, v in headers if not k.startswith(b":")],
        }
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            await asyncio.get_running_loop().create_future()  # until cancelled
            return {"type": "http.disconnect"}

        status, answer = 0, bytearray()

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if self.silent or self.transport is None or self.transport.is_closing():
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                response = [(b":status", str(status).encode()), *message.get("headers", [])]
                self.h2.send_headers(stream_id, response)
            elif message["type"] == "http.response.body":
                answer.extend(message.get("body", b""))
                more = message.get("more_body", False)
                self.h2.send_data(stream_id, message.get("body", b""), end_stream=not more)
                self.flush()

        try:
            await self.server.app(scope, receive, send)
        except h2.exceptions.StreamClosedError:
            pass
        finally:
            self.tasks.pop(stream_id, None)
        if self.server.apple_like:
            self.as_apple_would(status, bytes(answer))
        if self.last_stream is not None and not self.tasks:
            self.close()  # GOAWAY said so; the last answer is out

    def as_apple_would(self, status: int, answer: bytes) -> None:
        if status == 200 and self.h2.local_settings.max_concurrent_streams < APPLE_STREAMS:
            self.update_settings({MAX_STREAMS: APPLE_STREAMS})
        elif status == 403:
            reason = orjson.loads(answer).get("reason", "").encode() if answer else b""
            if reason in _TOKEN_REFUSALS:
                self.goaway(0, orjson.dumps({"reason": reason.decode()}))

    def update_settings(self, settings: dict[int, int]) -> None:
        if not self.silent and self.transport and not self.transport.is_closing():
            self.h2.update_settings(settings)
            self.flush()

    def goaway(self, error_code: int, debug: bytes, last_stream: int | None = None) -> None:
        """Graceful: written by hand, since h2's close_connection() stops the connection
        answering the streams it already accepted."""
        if self.transport is None or self.transport.is_closing() or self.silent:
            return
        self.last_stream = self.h2.highest_inbound_stream_id if last_stream is None else last_stream
        for stream_id in [s for s in self.tasks if s > self.last_stream]:
            self.tasks.pop(stream_id).cancel()
        self.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id, frame.error_code, frame.additional_data = (
            self.last_stream,
            error_code,
            debug,
        )
        self.transport.write(frame.serialize())
        self.server.goaways_sent.append((error_code, debug))
        if not self.tasks:
            self.close()

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks.values():
            task.cancel()


@contextlib.asynccontextmanager
async def serve_h2(
    app: Any, certificates: TestCertificates, **options: Any
) -> AsyncIterator[H2Server]:
    """An H2Server on a free loopback port, with ``options`` as H2Server's."""
    server = H2Server(app, **options)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert_file, certificates.key_file)
    context.set_alpn_protocols(["h2"])
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: _Connection(server), "127.0.0.1", 0, ssl=context)
    server.url = f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    server.listener = listener
    try:
        yield server
    finally:
        listener.close()
        for connection in server.connections:
            connection.close()
            if connection.transport is not None:
                connection.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listener.wait_closed(), 5)
