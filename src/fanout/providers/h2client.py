"""A small HTTP/2 client on the `h2` protocol library: what the push providers need, no more.

Why not httpx: measured here against the local APNs emulator, httpx's HTTP/2 (httpcore)
sent ~480 requests/s, and with 500 requests in flight a quarter of them failed with
WriteError (each one a push that may have been delivered and is then retried: a
duplicate). Push services want exactly this shape of traffic: many small requests
multiplexed over one or two long-lived connections, so the client keeps the streams
of a connection below the server's MAX_CONCURRENT_STREAMS, honours flow control and
opens a new connection after GOAWAY or a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

# Events after which a waiting request may proceed: a stream slot or window freed.
_FREES_CAPACITY = (
    h2.events.StreamEnded,
    h2.events.StreamReset,
    h2.events.WindowUpdated,
    h2.events.RemoteSettingsChanged,
    h2.events.ConnectionTerminated,
)


class H2Error(Exception):
    """The request failed in transport. ``unsent``: the service never processed it (the
    connection was closed before it was sent, or GOAWAY excluded it), so sending it again
    cannot deliver it twice."""

    def __init__(self, message: str, *, unsent: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent


@dataclass
class H2Response:
    status_code: int
    headers: dict[str, str]
    content: bytes


@dataclass
class _Stream:
    done: asyncio.Future[H2Response]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Connection:
    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host, self.port, self.context = host, port, context
        # Measured with py-spy in a delivery worker: checking and Huffman-coding our own
        # well-formed headers was ~30% of its CPU, so both are off; HPACK indexing stays.
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding="utf-8",
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        encode = self.h2.encoder.encode
        self.h2.encoder.encode = lambda headers, huffman=False: encode(headers, huffman=False)  # type: ignore[method-assign]
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._capacity = asyncio.Condition()  # a stream slot or flow-control window freed

    async def open(self) -> None:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname=self.host
        )
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            writer.close()
            raise H2Error(f"{self.host}:{self.port} does not speak HTTP/2")
        self._writer = writer
        self.h2.initiate_connection()
        self._flush()
        self._reader_task = asyncio.create_task(self._read(reader))

    @property
    def load(self) -> int:
        return len(self.streams)

    def _flush(self) -> None:
        if self._writer is not None and (data := self.h2.data_to_send()):
            self._writer.write(data)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> H2Response:
        async with self._capacity:
            # len(self.streams), not h2's open_outbound_streams: that one walks every stream
            # and cost 14% of a delivery worker's CPU when asked on every wake-up.
            await self._capacity.wait_for(
                lambda: (
                    self.closed
                    or len(self.streams) < self.h2.remote_settings.max_concurrent_streams
                )
            )
            if self.closed:
                raise H2Error("connection closed", unsent=True)
            stream_id = self.h2.get_next_available_stream_id()
            stream = _Stream(asyncio.get_running_loop().create_future())
            self.streams[stream_id] = stream
            pseudo = [
                (":method", method),
                (":scheme", "https"),
                (":authority", f"{self.host}:{self.port}"),
                (":path", path),
            ]
            self.h2.send_headers(stream_id, pseudo + list(headers.items()), end_stream=not body)
            self._flush()
            view = memoryview(body)
            while view:
                await self._capacity.wait_for(
                    lambda: self.closed or self.h2.local_flow_control_window(stream_id) > 0
                )
                if self.closed:
                    raise H2Error("connection closed while sending")
                size = min(
                    len(view),
                    self.h2.local_flow_control_window(stream_id),
                    self.h2.max_outbound_frame_size,
                )
                self.h2.send_data(stream_id, view[:size].tobytes(), end_stream=size == len(view))
                view = view[size:]
                self._flush()
        return await stream.done

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                events = self.h2.receive_data(data)
                for event in events:
                    self._handle(event)
                self._flush()
                if any(isinstance(e, _FREES_CAPACITY) for e in events):
                    async with self._capacity:
                        self._capacity.notify_all()
        except (OSError, h2.exceptions.ProtocolError, ssl.SSLError):
            pass
        finally:
            await self._fail_all("connection lost")

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                for raw_name, raw_value in event.headers or []:
                    name, value = _text(raw_name), _text(raw_value)
                    if name == ":status":
                        stream.status = int(value)
                    else:
                        stream.headers[name] = value
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and event.data is not None:
                stream.body += event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None and not stream.done.done():
                stream.done.set_result(
                    H2Response(stream.status, stream.headers, bytes(stream.body))
                )
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None and not stream.done.done():
                stream.done.set_exception(H2Error(f"stream reset ({event.error_code})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            # GOAWAY: streams above last_stream_id were not processed; new ones go elsewhere.
            self.closed = True
            last = event.last_stream_id or 0
            for stream_id in [s for s in self.streams if s > last]:
                stream = self.streams.pop(stream_id)
                if not stream.done.done():
                    stream.done.set_exception(
                        H2Error("GOAWAY before this stream was processed", unsent=True)
                    )

    async def _fail_all(self, reason: str) -> None:
        self.closed = True
        for stream in self.streams.values():
            if not stream.done.done():
                stream.done.set_exception(H2Error(reason))
        self.streams.clear()
        async with self._capacity:
            self._capacity.notify_all()

    async def close(self) -> None:
        self.closed = True
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self.h2.close_connection()
                self._flush()
                self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class H2Client:
    """Per origin, up to ``connections_per_origin`` connections; requests go to the least
    busy open one, and a closed one is replaced on the next request."""

    def __init__(self, context: ssl.SSLContext, *, connections_per_origin: int = 2) -> None:
        context.set_alpn_protocols(["h2"])
        self.context = context
        self.per_origin = connections_per_origin
        self._pools: dict[tuple[str, int], list[_Connection]] = {}
        self._opening = asyncio.Lock()

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> H2Response:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise H2Error(f"not an https URL: {url}")
        origin = (parts.hostname, parts.port or 443)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lowered = {k.lower(): v for k, v in headers.items()}
        lowered["content-length"] = str(len(content))
        for attempt in range(3):
            connection = await self._connection(origin)
            try:
                return await connection.request("POST", path or "/", lowered, content)
            except H2Error as exc:
                if not exc.unsent or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _connection(self, origin: tuple[str, int]) -> _Connection:
        pool = [c for c in self._pools.get(origin, []) if not c.closed]
        self._pools[origin] = pool
        idle = min(pool, key=lambda c: c.load, default=None)
        if idle is not None and (idle.load < 100 or len(pool) >= self.per_origin):
            return idle
        async with self._opening:
            pool = [c for c in self._pools.get(origin, []) if not c.closed]
            if len(pool) < self.per_origin:
                connection = _Connection(origin[0], origin[1], self.context)
                try:
                    await connection.open()
                except OSError as exc:
                    raise H2Error(f"cannot connect to {origin[0]}:{origin[1]}: {exc}") from exc
                pool.append(connection)
                self._pools[origin] = pool
            return min(pool, key=lambda c: c.load)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            for connection in pool:
                await connection.close()
        self._pools.clear()
