"""The client side of one HTTP/2 connection as a sans-I/O codec (RFC 9113).

Requests go in (``send_request``) and bytes come out (``data_to_send``); the server's
bytes go in (``receive``) and events come out (``events.py``): a whole ``Response``, a
``StreamReset``, ``GoAway``, ``SettingsChanged``, ``PingAcknowledged`` or
``ConnectionTerminated``. No
sockets, clocks or asyncio here: ``connection.py`` is the asyncio shell around it, and
tests/unit/test_codec.py plays it against the ``h2`` library as the server.

What a client must check, it checks: frame sizes, padding, the order of a header block
(HEADERS then only its CONTINUATIONs), SETTINGS values, WINDOW_UPDATE increments, both
flow-control windows each way, frames on streams it never opened, and malformed responses
(no ``:status``, a Content-Length the body does not match). A breach of the connection's
rules ends it with GOAWAY and the error code; a breach on one stream resets that stream.
Push services answer in a few hundred bytes: windows are opened wide (16 MiB) so that
WINDOW_UPDATE is rare, and a body past ``MAX_BODY`` resets its stream.
"""

from __future__ import annotations

from fanout.errors import FanoutError
from fanout.providers.h2.events import (
    ConnectionTerminated,
    Event,
    GoAway,
    PingAcknowledged,
    Response,
    SettingsChanged,
    StreamReset,
)
from fanout.providers.h2.frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    ENABLE_CONNECT_PROTOCOL,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    GOAWAY_HEAD,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    LARGEST_FRAME,
    LAST_STREAM_ID,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    check_path,
    encode_field,
    error_name,
    frame,
)
from fanout.providers.h2.headers import CompressionError, Headers, RawValue, decode_block

# What the server may send before we top the connection window up, and each stream's
# window: responses are small, so a generous window means we rarely send WINDOW_UPDATE.
RECEIVE_WINDOW = 1 << 24
MAX_HEADER_LIST = 1 << 16  # a response's headers as HPACK counts them; advertised
MAX_HEADER_BLOCK = 1 << 17  # HPACK bytes of one header block: a CONTINUATION flood ends here
MAX_BODY = 1 << 20  # a response body past this resets its stream (a Web Push endpoint is
# any URL a browser gave us: it must not be able to fill our memory)
UNLIMITED = 2**32 - 1


class ProtocolError(FanoutError):
    """A connection error found in what the server sent (raised and caught in here)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class NoStreamAvailable(FanoutError):
    """``send_request`` while ``available_streams`` is 0."""


class _Stream:
    __slots__ = ("body", "headers", "pending", "receive_window", "send_window", "status")

    def __init__(self, send_window: int, receive_window: int) -> None:
        self.status = 0  # until the final (non-1xx) response headers
        self.headers = Headers()
        self.body = b""
        self.send_window = send_window  # what we may still send on this stream
        self.receive_window = receive_window  # what the server may still send on it
        self.pending = b""  # request body waiting for flow-control window


class ClientCodec:
    """One HTTP/2 connection, client side: every POST to ``authority`` over TLS."""

    def __init__(self, authority: str, *, receive_window: int = RECEIVE_WINDOW) -> None:
        self.window_size = receive_window  # ours, for the connection and each stream
        self.streams: dict[int, _Stream] = {}
        self.next_stream_id = 1
        self.settled = False  # the server's first SETTINGS (its connection preface) came
        self.draining = False  # no new streams: GOAWAY either way, or stream ids used up
        self.terminated = False  # a connection error: nothing more is read or sent
        self.goaway_last_stream: int | None = None  # from the server's GOAWAY
        # The server's settings, as RFC 9113 starts them.
        self.peer_max_streams = UNLIMITED
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.peer_max_header_list: int | None = None
        self.send_window = DEFAULT_WINDOW  # connection window for our DATA
        self.receive_window = DEFAULT_WINDOW  # connection window for the server's DATA
        self._unacknowledged = 0  # DATA received since our last connection WINDOW_UPDATE
        self._prefix = b"\x83\x87" + encode_field(":authority", authority)  # POST, https
        self._out = bytearray()
        self._inbox = bytearray()
        self._block: tuple[int, int, bytearray] | None = None  # (stream, flags, fragments)
        self._blocked: dict[int, None] = {}  # streams whose body waits for window, in order

    # --- sending -------------------------------------------------------------------

    def initiate(self) -> None:
        """The client's connection preface: no push, no HPACK dynamic table (headers.py
        says why), large receive windows."""
        self._out += PREFACE
        self._out += frame(
            SETTINGS,
            0,
            0,
            SETTING.pack(HEADER_TABLE_SIZE, 0)
            + SETTING.pack(ENABLE_PUSH, 0)
            + SETTING.pack(INITIAL_WINDOW_SIZE, self.window_size)
            + SETTING.pack(MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
        )
        if self.window_size > DEFAULT_WINDOW:
            increment = self.window_size - DEFAULT_WINDOW
            self._out += frame(WINDOW_UPDATE, 0, 0, U32.pack(increment))
            self.receive_window = self.window_size

    def wants_to_send(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def available_streams(self) -> int:
        """How many more requests the server takes now (its MAX_CONCURRENT_STREAMS)."""
        if self.draining or not self.settled:
            return 0
        return max(0, self.peer_max_streams - len(self.streams))

    def send_request(self, path: str, header_block: bytes, body: bytes = b"") -> int:
        """Queue a POST of ``body`` to ``path``; ``header_block`` is the HPACK of the other
        headers (``frames.encode_headers``). Returns the stream id. Raises InvalidHeader
        for a path HTTP/2 cannot carry and NoStreamAvailable when the server takes no
        more streams; either way nothing was queued."""
        if self.draining or not self.settled or len(self.streams) >= self.peer_max_streams:
            raise NoStreamAvailable("the server takes no more streams on this connection")
        check_path(path)
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        if self.next_stream_id > LAST_STREAM_ID:
            self.draining = True  # that was the last stream id a client may use
        block = self._prefix + encode_field(":path", path) + header_block
        flags = END_HEADERS if body else END_HEADERS | END_STREAM
        if len(block) <= self.peer_max_frame:
            self._out += FRAME_HEADER.pack(len(block) << 8 | HEADERS, flags, stream_id)
            self._out += block
        else:  # HEADERS, then CONTINUATIONs, back to back as RFC 9113 4.3 requires
            size = self.peer_max_frame
            self._out += frame(HEADERS, flags & END_STREAM, stream_id, block[:size])
            for start in range(size, len(block), size):
                last = start + size >= len(block)
                fragment = block[start : start + size]
                self._out += frame(CONTINUATION, END_HEADERS if last else 0, stream_id, fragment)
        stream = _Stream(self.peer_initial_window, self.window_size)
        self.streams[stream_id] = stream
        if body:
            stream.pending = body
            self._send_body(stream_id, stream)
        return stream_id

    def reset_stream(self, stream_id: int, code: int = CANCEL) -> bool:
        """Give up on a stream (no answer in time, caller gone); False if not open."""
        if self.streams.pop(stream_id, None) is None:
            return False
        self._blocked.pop(stream_id, None)
        self._out += frame(RST_STREAM, 0, stream_id, U32.pack(code))
        return True

    def ping(self, payload: bytes) -> None:
        self._out += frame(PING, 0, 0, payload)

    def close(self, code: int = NO_ERROR, debug: bytes = b"") -> None:
        """GOAWAY: we open no more streams (and accept none from the server: last id 0)."""
        if not self.terminated:
            self._out += frame(GOAWAY, 0, 0, GOAWAY_HEAD.pack(0, code) + debug)
        self.draining = True

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        """As much of the stream's body as both windows and MAX_FRAME_SIZE allow."""
        while stream.pending:
            size = min(len(stream.pending), stream.send_window, self.send_window)
            size = min(size, self.peer_max_frame)
            if size <= 0:
                self._blocked[stream_id] = None
                return
            chunk, stream.pending = stream.pending[:size], stream.pending[size:]
            stream.send_window -= size
            self.send_window -= size
            self._out += frame(DATA, 0 if stream.pending else END_STREAM, stream_id, chunk)

    def _resume_bodies(self) -> None:
        waiting, self._blocked = self._blocked, {}
        for stream_id in waiting:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._send_body(stream_id, stream)

    # --- receiving -----------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Everything the server's bytes complete, in order. Incomplete frames wait."""
        events: list[Event] = []
        if self.terminated:
            return events
        inbox = self._inbox
        inbox += data
        position, end = 0, len(inbox)
        try:
            while end - position >= 9:
                head, flags, stream_id = FRAME_HEADER.unpack_from(inbox, position)
                length = head >> 8
                if length > DEFAULT_MAX_FRAME:  # we never raise our MAX_FRAME_SIZE
                    raise ProtocolError(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - position - 9 < length:
                    break
                payload = bytes(inbox[position + 9 : position + 9 + length])
                position += 9 + length
                self._on_frame(head & 0xFF, flags, stream_id & LAST_STREAM_ID, payload, events)
        except ProtocolError as exc:
            self._terminate(exc.code, exc.reason, events)
            inbox.clear()  # nothing after a connection error is read
        else:
            del inbox[:position]
        return events

    def _on_frame(
        self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._block is not None and (kind != CONTINUATION or stream_id != self._block[0]):
            raise ProtocolError(PROTOCOL_ERROR, "a header block interrupted by another frame")
        if not self.settled and (kind != SETTINGS or flags & ACK):
            raise ProtocolError(PROTOCOL_ERROR, "the server's first frame was not SETTINGS")
        if kind == HEADERS:
            self._on_headers(flags, stream_id, payload, events)
        elif kind == DATA:
            self._on_data(flags, stream_id, payload, events)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload, events)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload, events)
        elif kind == CONTINUATION:
            self._on_continuation(flags, payload, events)
        elif kind == RST_STREAM:
            self._on_rst_stream(stream_id, payload, events)
        elif kind == PING:
            if len(payload) != 8:
                raise ProtocolError(FRAME_SIZE_ERROR, f"PING of {len(payload)} bytes")
            if stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "PING on a stream")
            if flags & ACK:
                events.append(PingAcknowledged(payload))
            else:
                self._out += frame(PING, ACK, 0, payload)
        elif kind == GOAWAY:
            self._on_goaway(stream_id, payload, events)
        elif kind == PRIORITY:
            if not stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5 and stream_id in self.streams:
                self._stream_error(stream_id, FRAME_SIZE_ERROR, "PRIORITY not 5 bytes", events)
        elif kind == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE though push is disabled")
        # Unknown frame types are ignored, as RFC 9113 5.5 asks.

    def _idle(self, stream_id: int) -> bool:
        """A stream we never opened: even ids are the server's (it may not push), and odd
        ones from ``next_stream_id`` on are not used yet."""
        return stream_id % 2 == 0 or stream_id >= self.next_stream_id

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id or self._idle(stream_id):
            raise ProtocolError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, never opened")
        start, end = 0, len(payload)
        if flags & (PADDED | PRIORITY_FLAG):
            start = (1 if flags & PADDED else 0) + (5 if flags & PRIORITY_FLAG else 0)
            if end < start:
                raise ProtocolError(FRAME_SIZE_ERROR, "HEADERS too short for its flags")
            if flags & PADDED:
                end -= payload[0]
                if end < start:
                    raise ProtocolError(PROTOCOL_ERROR, "HEADERS padding longer than the frame")
        fragment = payload[start:end] if start or end < len(payload) else payload
        if flags & END_HEADERS:
            self._on_header_block(stream_id, flags, fragment, events)
        else:
            self._block = (stream_id, flags, bytearray(fragment))

    def _on_continuation(self, flags: int, payload: bytes, events: list[Event]) -> None:
        if self._block is None:
            raise ProtocolError(PROTOCOL_ERROR, "CONTINUATION without HEADERS before it")
        stream_id, first_flags, block = self._block
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolError(ENHANCE_YOUR_CALM, f"a header block over {MAX_HEADER_BLOCK} bytes")
        if flags & END_HEADERS:
            self._block = None
            self._on_header_block(stream_id, first_flags, bytes(block), events)

    def _on_header_block(
        self, stream_id: int, flags: int, block: bytes, events: list[Event]
    ) -> None:
        stream = self.streams.get(stream_id)
        try:  # a dropped stream's block is still read through: it may break HPACK
            fields = decode_block(block)
            if stream is not None:
                self._on_fields(stream_id, stream, flags, fields, events)
        except CompressionError as exc:
            raise ProtocolError(COMPRESSION_ERROR, f"HPACK: {exc}") from exc

    def _on_fields(
        self,
        stream_id: int,
        stream: _Stream,
        flags: int,
        fields: list[tuple[bytes, RawValue]],
        events: list[Event],
    ) -> None:
        if stream.status:  # trailers: only end the stream; their fields are not used
            if not flags & END_STREAM:
                self._stream_error(stream_id, PROTOCOL_ERROR, "trailers without END_STREAM", events)
            else:
                self._finish(stream_id, stream, events)
            return
        # As HPACK counts a header list, but with values as sent (a Huffman-coded value
        # decodes to at most 8/5 of it): what we would hold if we read them all.
        if sum(len(name) + len(value.data) + 32 for name, value in fields) > MAX_HEADER_LIST:
            self._stream_error(stream_id, PROTOCOL_ERROR, "a header list over our limit", events)
            return
        status, headers = 0, stream.headers
        for name, value in fields:
            if name[:1] == b":":
                if name != b":status" or status or headers:
                    problem = f"pseudo-header {name[:20]!r} out of place"
                    self._stream_error(stream_id, PROTOCOL_ERROR, problem, events)
                    return
                code = value.decode()
                if len(code) != 3 or not code.isdigit():
                    self._stream_error(stream_id, PROTOCOL_ERROR, "a malformed :status", events)
                    return
                status = int(code)
            elif name.lower() != name:
                problem = f"upper-case header name {name[:40]!r}"
                self._stream_error(stream_id, PROTOCOL_ERROR, problem, events)
                return
            else:
                headers.add(name.decode("latin-1"), value)
        if not status:
            self._stream_error(stream_id, PROTOCOL_ERROR, "a response without :status", events)
        elif status < 200:  # informational: the real answer follows
            if flags & END_STREAM or status == 101:
                self._stream_error(stream_id, PROTOCOL_ERROR, f"a final {status}", events)
            headers.clear()
        else:
            stream.status = status
            if flags & END_STREAM:
                self._finish(stream_id, stream, events)

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        data = payload
        if flags & PADDED:
            if not size:
                raise ProtocolError(FRAME_SIZE_ERROR, "padded DATA without its pad length")
            if payload[0] >= size:
                raise ProtocolError(PROTOCOL_ERROR, "DATA padding longer than the frame")
            data = payload[1 : size - payload[0]]
        # The whole frame, padding included, counts against both windows (RFC 9113 6.9),
        # even on a stream that has closed.
        self.receive_window -= size
        if self.receive_window < 0:
            raise ProtocolError(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        self._unacknowledged += size
        if self._unacknowledged >= self.window_size // 2:
            self._out += frame(WINDOW_UPDATE, 0, 0, U32.pack(self._unacknowledged))
            self.receive_window += self._unacknowledged
            self._unacknowledged = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise ProtocolError(PROTOCOL_ERROR, f"DATA on stream {stream_id}, never opened")
            return
        if not stream.status:
            self._stream_error(stream_id, PROTOCOL_ERROR, "DATA before the headers", events)
            return
        stream.receive_window -= size
        if stream.receive_window < 0:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR, "DATA beyond the window", events)
            return
        stream.body = stream.body + data if stream.body else data
        if len(stream.body) > MAX_BODY:
            self._stream_error(stream_id, CANCEL, f"a response over {MAX_BODY} bytes", events)
        elif flags & END_STREAM:
            self._finish(stream_id, stream, events)
        elif stream.receive_window < self.window_size // 2:  # a large answer: let it go on
            increment = self.window_size - stream.receive_window
            self._out += frame(WINDOW_UPDATE, 0, stream_id, U32.pack(increment))
            stream.receive_window = self.window_size

    def _finish(self, stream_id: int, stream: _Stream, events: list[Event]) -> None:
        length = stream.headers.get("content-length")
        if length is not None and not (length.isdigit() and int(length) == len(stream.body)):
            problem = f"content-length {length[:20]!r} but {len(stream.body)} bytes"
            self._stream_error(stream_id, PROTOCOL_ERROR, problem, events)
            return
        del self.streams[stream_id]
        if stream.pending:  # answered before our body was all sent: stop sending it
            self._blocked.pop(stream_id, None)
            self._out += frame(RST_STREAM, 0, stream_id, U32.pack(NO_ERROR))
        events.append(Response(stream_id, stream.status, stream.headers, stream.body))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, f"SETTINGS of {len(payload)} bytes")
        changed: dict[int, int] = {}
        for offset in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, offset)
            if key == MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, f"INITIAL_WINDOW_SIZE {value}")
                delta = value - self.peer_initial_window
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolError(FLOW_CONTROL_ERROR, "a stream window past 2^31-1")
                self.peer_initial_window = value
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= LARGEST_FRAME:
                    raise ProtocolError(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self.peer_max_frame = value
            elif key == ENABLE_PUSH:
                if value != 0:  # a server may only say 0 (RFC 9113 6.5.2)
                    raise ProtocolError(PROTOCOL_ERROR, f"ENABLE_PUSH {value} from a server")
            elif key == ENABLE_CONNECT_PROTOCOL:
                if value > 1:
                    raise ProtocolError(PROTOCOL_ERROR, f"ENABLE_CONNECT_PROTOCOL {value}")
            elif key == MAX_HEADER_LIST_SIZE:
                self.peer_max_header_list = value
            changed[key] = value  # HEADER_TABLE_SIZE: we never index, so any size will do
        self._out += frame(SETTINGS, ACK, 0)
        first, self.settled = not self.settled, True
        events.append(SettingsChanged(changed, first))
        if self._blocked:
            self._resume_bodies()

    def _on_window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, f"WINDOW_UPDATE of {len(payload)} bytes")
        increment = U32.unpack(payload)[0] & LAST_STREAM_ID
        if not stream_id:
            if not increment:
                raise ProtocolError(PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "the connection window past 2^31-1")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                if self._idle(stream_id):
                    raise ProtocolError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle {stream_id}")
                return
            if not increment:
                self._stream_error(stream_id, PROTOCOL_ERROR, "a WINDOW_UPDATE of 0", events)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._stream_error(stream_id, FLOW_CONTROL_ERROR, "window past 2^31-1", events)
                return
        if self._blocked:
            self._resume_bodies()

    def _on_rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, f"RST_STREAM of {len(payload)} bytes")
        if not stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        code = U32.unpack(payload)[0]
        if self.streams.pop(stream_id, None) is None:
            if self._idle(stream_id):
                raise ProtocolError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return
        self._blocked.pop(stream_id, None)
        reason = f"stream reset by the server ({error_name(code)})"
        events.append(StreamReset(stream_id, code, reason, unsent=code == REFUSED_STREAM))

    def _on_goaway(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ProtocolError(FRAME_SIZE_ERROR, f"GOAWAY of {len(payload)} bytes")
        last, code = GOAWAY_HEAD.unpack_from(payload)
        last &= LAST_STREAM_ID
        if self.goaway_last_stream is not None:  # a later GOAWAY may only lower it
            last = min(last, self.goaway_last_stream)
        self.goaway_last_stream = last
        self.draining = True
        unprocessed = sorted(s for s in self.streams if s > last)
        for s in unprocessed:
            del self.streams[s]
            self._blocked.pop(s, None)
        events.append(GoAway(last, code, payload[8:], unprocessed))

    def _stream_error(self, stream_id: int, code: int, reason: str, events: list[Event]) -> None:
        """Reset one stream for the server's breach on it (RFC 9113 5.4.2)."""
        self.streams.pop(stream_id, None)
        self._blocked.pop(stream_id, None)
        self._out += frame(RST_STREAM, 0, stream_id, U32.pack(code))
        events.append(StreamReset(stream_id, code, f"{reason} ({error_name(code)})"))

    def _terminate(self, code: int, reason: str, events: list[Event]) -> None:
        """A connection error (RFC 9113 5.4.1): GOAWAY with the code, every stream fails."""
        self._block = None
        self._out += frame(GOAWAY, 0, 0, GOAWAY_HEAD.pack(0, code) + reason.encode()[:200])
        self.terminated = self.draining = True
        failed = list(self.streams)
        self.streams.clear()
        self._blocked.clear()
        events.append(ConnectionTerminated(code, f"{reason} ({error_name(code)})", failed))
