"""A small HTTP/2 client written for push traffic: many small POSTs multiplexed over one
or two long-lived TLS connections per push service. Frames are built and parsed here;
HPACK decoding is the ``hpack`` library's.

Why not a library. Measured here against the local APNs emulator:
- httpx's HTTP/2 (httpcore) sent ~480 requests/s, and with 500 requests in flight a
  quarter failed with WriteError (each one a push that may have been delivered, then
  retried: a duplicate).
- A client on the ``h2`` state machine reached ~2,200-3,500 requests/s for a full core:
  py-spy put ~40% of it in ``send_headers`` (HPACK, header validation) and most of the
  rest in h2's per-frame event machinery and one TLS write per request.
This one encodes its headers as HPACK literals without indexing (no table state to
keep, nothing to Huffman-code), writes all frames made in one event-loop turn as one
TLS write and resolves a request's future straight from the frame parser; see
docs/performance.md for the figures.

What it keeps of the protocol: the server's SETTINGS (MAX_CONCURRENT_STREAMS,
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE), flow control both ways, PING, RST_STREAM, and
GOAWAY (streams the server did not process fail as ``unsent``; new requests go to a new
connection).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import struct
from dataclasses import dataclass

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
REFUSED_STREAM, CANCEL = 0x7, 0x8

# What we accept: responses are small, so a generous window means we rarely update it.
RECEIVE_WINDOW = 1 << 24
# The static table's entries for names we send (RFC 7541 appendix A).
_STATIC_NAMES = {
    ":authority": 1, ":path": 4, "authorization": 23, "content-encoding": 26,
    "content-length": 28, "content-type": 31,
}  # fmt: skip


class H2Error(Exception):
    """The request failed in transport. ``unsent``: the service never processed it (the
    connection was closed before it was sent, or GOAWAY or REFUSED_STREAM excluded it),
    so sending it again cannot deliver it twice."""

    def __init__(self, message: str, *, unsent: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent


@dataclass
class H2Response:
    status_code: int
    headers: dict[str, str]
    content: bytes


def _integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with its prefix OR-ed into ``first_byte``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = bytearray([first_byte | limit])
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_field(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing (RFC 7541 6.2.2), raw strings."""
    raw = value.encode()
    tail = _integer(len(raw), 7, 0) + raw
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return _integer(index, 4, 0) + tail
    name_bytes = name.encode()
    return b"\x00" + _integer(len(name_bytes), 7, 0) + name_bytes + tail


class _Stream:
    __slots__ = ("body", "deadline", "done", "headers", "pending", "status", "window")

    def __init__(self, done: asyncio.Future[H2Response], window: int, deadline: float) -> None:
        self.done = done
        self.deadline = deadline  # loop time by which the answer must have come
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.window = window  # what we may still send on this stream
        self.pending = b""  # request body waiting for flow-control window


class _Connection(asyncio.Protocol):
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self.next_stream_id = 1
        self.max_streams = 100  # until the server's SETTINGS say otherwise
        self.max_frame_size = 16384
        self.stream_window = 65535  # the server's INITIAL_WINDOW_SIZE
        self.send_window = 65535  # connection-level window for our DATA
        self.unacknowledged = 0  # DATA received since our last WINDOW_UPDATE
        self.decoder = hpack.Decoder()
        self._prefix = b"\x83\x87" + encode_field(":authority", f"{host}:{port}")  # POST, https
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._flush_scheduled = False
        self._header_block: tuple[int, int, bytearray] | None = None  # (stream, flags, block)
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._window_waiters: list[int] = []  # streams with a body waiting for window
        self._settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None

    async def open(self, context: ssl.SSLContext) -> None:
        async with asyncio.timeout(self.timeout):
            await self._loop.create_connection(
                lambda: self, self.host, self.port, ssl=context, server_hostname=self.host
            )
        assert self._transport is not None
        ssl_object = self._transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            self._transport.close()
            raise H2Error(f"{self.host}:{self.port} does not speak HTTP/2")
        settings = _SETTING.pack(SETTINGS_ENABLE_PUSH, 0) + _SETTING.pack(
            SETTINGS_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW
        )
        self._outbox += PREFACE
        self._frame(SETTINGS, 0, 0, settings)
        self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(RECEIVE_WINDOW - 65535))
        self._flush()
        # The server's first SETTINGS tell how many streams it takes; wait for them.
        async with asyncio.timeout(self.timeout):
            await self._settled

    @property
    def load(self) -> int:
        return len(self.streams)

    # --- sending -------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self._outbox += _FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream_id)
        self._outbox += payload
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Everything framed in this turn of the event loop goes out as one TLS write."""
        self._flush_scheduled = False
        if self._outbox and self._transport is not None and not self._transport.is_closing():
            self._transport.write(bytes(self._outbox))
        self._outbox.clear()

    async def request(self, path: str, header_block: bytes, body: bytes) -> H2Response:
        """POST ``body`` to ``path``; ``header_block`` is the HPACK of the other headers."""
        while len(self.streams) >= self.max_streams and not self.closed:
            waiter = self._loop.create_future()
            self._slot_waiters.append(waiter)
            await waiter
        if self.closed:
            raise H2Error("connection closed", unsent=True)
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        stream = _Stream(
            self._loop.create_future(), self.stream_window, self._loop.time() + self.timeout
        )
        self.streams[stream_id] = stream
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self.timeout / 4, self._expire_streams)
        block = self._prefix + encode_field(":path", path) + header_block
        if len(block) > self.max_frame_size:
            self.streams.pop(stream_id)
            raise H2Error(f"headers of {len(block)} bytes: more than one frame", unsent=True)
        self._frame(HEADERS, END_HEADERS | (0 if body else END_STREAM), stream_id, block)
        if body:
            stream.pending = body
            self._send_body(stream_id, stream)
        return await stream.done

    def _expire_streams(self) -> None:
        """Fail the streams the server has not answered in time, and tell it so.

        One timer a connection, every quarter of the timeout: a timer per request
        (asyncio.timeout) cost 12% of the delivery worker's throughput.
        """
        now = self._loop.time()
        for stream_id in [i for i, stream in self.streams.items() if stream.deadline <= now]:
            self._frame(RST_STREAM, 0, stream_id, _U32.pack(CANCEL))
            self._fail(stream_id, H2Error(f"no answer in {self.timeout:g}s"))
        self._watchdog = None
        if self.streams:
            self._watchdog = self._loop.call_later(self.timeout / 4, self._expire_streams)

    def _send_body(self, stream_id: int, stream: _Stream) -> bool:
        """As much of the stream's body as the windows allow; True when all is sent."""
        while stream.pending:
            size = min(len(stream.pending), stream.window, self.send_window, self.max_frame_size)
            if size <= 0:
                if stream_id not in self._window_waiters:
                    self._window_waiters.append(stream_id)
                return False
            chunk, stream.pending = stream.pending[:size], stream.pending[size:]
            stream.window -= size
            self.send_window -= size
            self._frame(DATA, 0 if stream.pending else END_STREAM, stream_id, chunk)
        return True

    def _resume_bodies(self) -> None:
        waiting, self._window_waiters = self._window_waiters, []
        for stream_id in waiting:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._send_body(stream_id, stream)

    # --- receiving -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        inbox = self._inbox
        inbox += data
        position, end = 0, len(inbox)
        try:
            while end - position >= 9:
                head, flags, stream_id = _FRAME_HEADER.unpack_from(inbox, position)
                length = head >> 8
                if end - position - 9 < length:
                    break
                payload = bytes(inbox[position + 9 : position + 9 + length])
                position += 9 + length
                self._on_frame(head & 0xFF, flags, stream_id & 0x7FFFFFFF, payload)
        except (hpack.HPACKError, struct.error, ValueError) as exc:
            self._abort(f"protocol error from {self.host}: {exc}")
        del inbox[:position]

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._header_block = (stream_id, flags, bytearray(payload))
            if flags & END_HEADERS:
                self._on_headers()
        elif kind == CONTINUATION and self._header_block is not None:
            self._header_block[2].extend(payload)
            if flags & END_HEADERS:
                self._on_headers()
        elif kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == SETTINGS and not flags & ACK:
            self._on_settings(payload)
        elif kind == WINDOW_UPDATE:
            increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
            if stream_id == 0:
                self.send_window += increment
            elif (stream := self.streams.get(stream_id)) is not None:
                stream.window += increment
            self._resume_bodies()
        elif kind == RST_STREAM:
            code = _U32.unpack(payload)[0]
            self._fail(stream_id, H2Error(f"stream reset ({code})", unsent=code == REFUSED_STREAM))
        elif kind == PING and not flags & ACK:
            self._frame(PING, ACK, 0, payload)
        elif kind == GOAWAY:
            self._on_goaway(_U32.unpack_from(payload)[0] & 0x7FFFFFFF)
        elif kind == PUSH_PROMISE:
            raise ValueError("PUSH_PROMISE after we disabled push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.

    def _on_headers(self) -> None:
        assert self._header_block is not None
        stream_id, flags, block = self._header_block
        self._header_block = None
        # Every block is decoded, even for a stream we dropped: HPACK state is shared.
        fields = self.decoder.decode(bytes(block), raw=True)
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        for name, value in fields:
            if name == b":status":
                stream.status = int(value)
            else:
                stream.headers[name.decode()] = value.decode(errors="replace")
        if 100 <= stream.status < 200 and not flags & END_STREAM:
            stream.status = 0  # an informational answer; the real one follows
        elif flags & END_STREAM:
            self._finish(stream_id)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self.unacknowledged += len(payload)
        if self.unacknowledged > RECEIVE_WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.unacknowledged))
            self.unacknowledged = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.body += payload
        if flags & END_STREAM:
            self._finish(stream_id)

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - 5, 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.max_streams = value
            elif key == SETTINGS_INITIAL_WINDOW_SIZE:
                for stream in self.streams.values():
                    stream.window += value - self.stream_window
                self.stream_window = value
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self.max_frame_size = value
        self._frame(SETTINGS, ACK, 0)
        if not self._settled.done():
            self._settled.set_result(None)
        self._resume_bodies()
        self._wake_slot_waiters()

    def _on_goaway(self, last_stream_id: int) -> None:
        """Streams above ``last_stream_id`` were not processed; new ones go elsewhere."""
        self.closed = True
        for stream_id in [s for s in self.streams if s > last_stream_id]:
            self._fail(stream_id, H2Error("GOAWAY before this stream was processed", unsent=True))
        self._wake_slot_waiters()
        if not self.streams and self._transport is not None:
            self._transport.close()

    def _finish(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id)
        if not stream.done.done():
            stream.done.set_result(H2Response(stream.status, stream.headers, stream.body))
        self._stream_closed()

    def _fail(self, stream_id: int, error: H2Error) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and not stream.done.done():
            stream.done.set_exception(error)
        self._stream_closed()

    def _stream_closed(self) -> None:
        if self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self.closed and not self.streams and self._transport is not None:
            self._transport.close()  # after GOAWAY, once the last answer is in

    def _wake_slot_waiters(self) -> None:
        free = self.max_streams - len(self.streams)
        while self._slot_waiters and (free > 0 or self.closed):
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def _abort(self, reason: str) -> None:
        if self._transport is not None:
            self._transport.abort()
        self.connection_lost(H2Error(reason))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        reason = f"connection lost: {exc}" if exc else "connection lost"
        for stream in self.streams.values():
            if not stream.done.done():
                stream.done.set_exception(H2Error(reason))
        self.streams.clear()
        if not self._settled.done():
            self._settled.set_exception(H2Error(reason, unsent=True))
        self._wake_slot_waiters()

    async def close(self) -> None:
        self.closed = True
        if self._transport is not None and not self._transport.is_closing():
            self._frame(GOAWAY, 0, 0, _U32.pack(max(0, self.next_stream_id - 2)) + _U32.pack(0))
            self._flush()
            self._transport.close()
        await asyncio.sleep(0)


class H2Client:
    """Per origin, up to ``connections_per_origin`` connections; requests go to the least
    busy open one, and a closed one is replaced on the next request."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        connections_per_origin: int = 2,
        request_timeout: float = 30.0,
    ) -> None:
        context.set_alpn_protocols(["h2"])
        self.context = context
        # Connecting, or a request's answer, taking longer than this fails as H2Error: a
        # push service that goes silent must not hold a batch (and its lease) for ever.
        self.request_timeout = request_timeout
        self.per_origin = connections_per_origin
        self._pools: dict[str, list[_Connection]] = {}
        self._origins: dict[str, tuple[str, int]] = {}
        self._header_blocks: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._opening = asyncio.Lock()

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> H2Response:
        origin, path = self._split(url)
        block = self._header_block(headers, len(content))
        for attempt in range(3):
            connection = await self._connection(origin)
            try:
                return await connection.request(path, block, content)
            except H2Error as exc:
                if not exc.unsent or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _split(self, url: str) -> tuple[str, str]:
        """("https://host:port", "/path?query"); origins are parsed once and remembered."""
        if not url.startswith("https://"):
            raise H2Error(f"not an https URL: {url}", unsent=True)
        slash = url.find("/", 8)
        origin, path = (url, "/") if slash < 0 else (url[:slash], url[slash:])
        if origin not in self._origins:
            host, _, port = origin[8:].rpartition(":")
            if not host or not port.isdigit():
                host, port = origin[8:], "443"
            if not host:
                raise H2Error(f"not an https URL: {url}", unsent=True)
            self._origins[origin] = (host.strip("[]"), int(port))
        return origin, path

    def _header_block(self, headers: dict[str, str], length: int) -> bytes:
        """The HPACK of a request's headers; most requests repeat a few header sets."""
        key = (*headers.items(), ("content-length", str(length)))
        block = self._header_blocks.get(key)
        if block is None:
            if len(self._header_blocks) > 256:
                self._header_blocks.clear()
            block = b"".join(encode_field(k.lower(), v) for k, v in key)
            self._header_blocks[key] = block
        return block

    async def _connection(self, origin: str) -> _Connection:
        pool = self._pools.get(origin)
        if pool:
            best = min(pool, key=lambda c: c.load) if len(pool) > 1 else pool[0]
            if not best.closed and (best.load < 100 or len(pool) >= self.per_origin):
                return best
        async with self._opening:
            pool = [c for c in self._pools.get(origin, []) if not c.closed]
            if len(pool) < self.per_origin:
                host, port = self._origins[origin]
                connection = _Connection(host, port, self.request_timeout)
                try:
                    await connection.open(self.context)
                except (OSError, TimeoutError) as exc:
                    raise H2Error(f"cannot connect to {host}:{port}: {exc}", unsent=True) from exc
                pool.append(connection)
            self._pools[origin] = pool
            return min(pool, key=lambda c: c.load)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            for connection in pool:
                with contextlib.suppress(Exception):
                    await connection.close()
        self._pools.clear()
