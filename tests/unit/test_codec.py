"""fanout's HTTP/2 codec against an independent peer: the ``h2`` library as the server.

The codec never touches a socket, so each test wires it to an ``h2`` server connection by
hand and moves bytes both ways (``Peer``). Frames no well-behaved server would send are
built with ``hyperframe`` (h2's own frame layer) or by hand, and fed to the codec alone.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PushPromiseFrame,
)

from fanout.providers.h2.codec import MAX_BODY, ClientCodec, NoStreamAvailable
from fanout.providers.h2.events import (
    ConnectionTerminated,
    GoAway,
    PingAcknowledged,
    Response,
    SettingsChanged,
    StreamReset,
)
from fanout.providers.h2.frames import (
    CANCEL,
    COMPRESSION_ERROR,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    LAST_STREAM_ID,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    InvalidHeader,
    encode_headers,
    frame,
)

S = h2.settings.SettingCodes
HEADERS = [("apns-topic", "com.example.books"), ("apns-push-type", "alert")]


class Peer:
    """A ClientCodec and an ``h2`` server connection, wired together by hand."""

    def __init__(self, settings: dict[int, int] | None = None, **codec: int) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.server = h2.connection.H2Connection(config)
        self.server.initiate_connection()
        if settings:
            self.server.update_settings(settings)
        self.codec = ClientCodec("push.example.com", **codec)
        self.codec.initiate()
        self.server_events: list[h2.events.Event] = []
        self.events: list[object] = []  # the codec's
        self.exchange()

    def exchange(self) -> None:
        """Move bytes both ways until neither side has anything to say."""
        while True:
            to_server = self.codec.data_to_send()
            if to_server:
                self.server_events += self.server.receive_data(to_server)
            to_client = self.server.data_to_send()
            if to_client:
                self.events += self.codec.receive(to_client)
            if not to_server and not to_client:
                return

    def feed(self, raw: bytes) -> list[object]:
        """Bytes no h2 server would send, straight to the codec; returns its events and
        passes what it answers to the server."""
        events: list[object] = list(self.codec.receive(raw))
        self.events += events
        self.exchange()
        return events

    def request(
        self,
        path: str = "/3/device/ab",
        body: bytes = b"{}",
        headers: list[tuple[str, str]] = HEADERS,
    ) -> int:
        block = encode_headers([*headers, ("content-length", str(len(body)))])
        stream_id = self.codec.send_request(path, block, body)
        self.exchange()
        return stream_id

    def respond(
        self,
        stream_id: int,
        status: int = 200,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        pad: int | None = None,
    ) -> None:
        fields = [(b":status", str(status).encode()), *(headers or [])]
        self.server.send_headers(stream_id, fields, end_stream=not body)
        if body:
            self.server.send_data(stream_id, body, end_stream=True, pad_length=pad)
        self.exchange()

    def received(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.server_events if isinstance(e, kind)]

    def responses(self) -> dict[int, Response]:
        return {e.stream_id: e for e in self.events if isinstance(e, Response)}

    def terminated(self) -> ConnectionTerminated:
        [event] = [e for e in self.events if isinstance(e, ConnectionTerminated)]
        return event


# --- a request and its answer -----------------------------------------------------------


def test_a_request_reaches_h2_as_sent_and_its_answer_comes_back() -> None:
    peer = Peer()
    stream_id = peer.request("/3/device/ab?x=1", b'{"aps":{}}')

    [request] = peer.received(h2.events.RequestReceived)
    assert request.stream_id == stream_id == 1
    assert request.headers == [
        (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"push.example.com"),
        (b":path", b"/3/device/ab?x=1"), (b"apns-topic", b"com.example.books"),
        (b"apns-push-type", b"alert"), (b"content-length", b"10"),
    ]  # fmt: skip
    assert b"".join(e.data for e in peer.received(h2.events.DataReceived)) == b'{"aps":{}}'
    assert [e.stream_id for e in peer.received(h2.events.StreamEnded)] == [1]

    peer.respond(1, 410, b'{"reason":"Unregistered"}', [(b"apns-id", b"42")])
    response = peer.responses()[1]
    assert (response.status_code, response.content) == (410, b'{"reason":"Unregistered"}')
    assert response.headers == {"apns-id": "42"}
    assert not peer.codec.streams


def test_a_request_without_a_body_ends_with_its_headers() -> None:
    peer = Peer()
    peer.request(body=b"")
    assert [e.stream_id for e in peer.received(h2.events.StreamEnded)] == [1]
    assert not peer.received(h2.events.DataReceived)


def test_many_streams_answered_out_of_order() -> None:
    peer = Peer()
    ids = [peer.request(f"/3/device/{i}") for i in range(50)]
    for stream_id in reversed(ids):
        peer.respond(stream_id, 200 + stream_id % 3)
    assert {i: r.status_code for i, r in peer.responses().items()} == {i: 200 + i % 3 for i in ids}


def test_informational_answers_and_trailers() -> None:
    peer = Peer()
    peer.request()
    peer.server.send_headers(1, [(b":status", b"100")])
    peer.server.send_headers(1, [(b":status", b"200"), (b"x-a", b"1")])
    peer.server.send_data(1, b"ok")
    peer.server.send_headers(1, [(b"x-trailer", b"t")], end_stream=True)
    peer.exchange()
    response = peer.responses()[1]
    assert (response.status_code, response.headers, response.content) == (200, {"x-a": "1"}, b"ok")


def test_late_frames_for_a_stream_we_reset_keep_hpack_in_step() -> None:
    """h2 indexes headers in its dynamic table; a stream we gave up on still has its
    header block decoded, or the next answer's indexed headers would be wrong."""
    peer = Peer()
    peer.request()
    peer.request()
    fields = [(b":status", b"200"), (b"x-custom", b"a-value-h2-will-index")]
    peer.server.send_headers(1, fields, end_stream=True)
    assert peer.codec.reset_stream(1)  # the answer is already on its way
    peer.server.send_headers(3, fields, end_stream=True)
    peer.exchange()
    assert list(peer.responses()) == [3]
    assert peer.responses()[3].headers == {"x-custom": "a-value-h2-will-index"}
    assert not peer.received(h2.events.ConnectionTerminated)  # a late RST_STREAM is fine


# --- flow control, both ways --------------------------------------------------------------


def test_a_body_larger_than_the_stream_window_waits_for_window_updates() -> None:
    peer = Peer({S.INITIAL_WINDOW_SIZE: 100})
    body = bytes(range(256)) * 4
    peer.request(body=body)
    assert sum(len(e.data) for e in peer.received(h2.events.DataReceived)) == 100
    while not peer.received(h2.events.StreamEnded):
        sent = sum(len(e.data) for e in peer.received(h2.events.DataReceived))
        peer.server.increment_flow_control_window(100, stream_id=1)
        peer.exchange()
        assert sum(len(e.data) for e in peer.received(h2.events.DataReceived)) - sent <= 100
    assert b"".join(e.data for e in peer.received(h2.events.DataReceived)) == body


def test_bodies_wait_for_the_connection_window_and_go_on_in_order() -> None:
    peer = Peer({S.INITIAL_WINDOW_SIZE: 1 << 20})
    bodies = [bytes([i]) * 30_000 for i in range(4)]  # 120,000 bytes; the window is 65,535
    ids = [peer.request(body=b) for b in bodies]
    assert sum(len(e.data) for e in peer.received(h2.events.DataReceived)) == 65_535
    for event in peer.received(h2.events.DataReceived):
        peer.server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    peer.exchange()
    for event in peer.received(h2.events.DataReceived)[-10:]:
        peer.server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    peer.exchange()
    got: dict[int, bytes] = {}
    for event in peer.received(h2.events.DataReceived):
        got[event.stream_id] = got.get(event.stream_id, b"") + event.data
    assert got == dict(zip(ids, bodies, strict=True))


def test_large_answers_reopen_both_receive_windows() -> None:
    """With a 4 KiB window, 20 answers of 60 KB each only get through if the codec sends
    WINDOW_UPDATE for the connection and each stream as it reads."""
    peer = Peer(receive_window=4096)
    ids = [peer.request() for _ in range(20)]
    body = b"x" * 60_000
    for stream_id in ids:
        peer.server.send_headers(stream_id, [(b":status", b"200")])
        sent = 0
        while sent < len(body):
            room = peer.server.local_flow_control_window(stream_id)
            assert room > 0, "the codec stopped opening its window"
            chunk = body[sent : sent + min(room, 16_384)]
            sent += len(chunk)
            peer.server.send_data(stream_id, chunk, end_stream=sent == len(body))
            peer.exchange()
    assert {i: len(r.content) for i, r in peer.responses().items()} == dict.fromkeys(ids, 60_000)


def test_data_beyond_our_window_is_a_flow_control_error() -> None:
    peer = Peer(receive_window=4096)
    peer.request()
    peer.server.send_headers(1, [(b":status", b"200")])
    peer.exchange()
    peer.feed(frame(0, 0, 1, b"x" * 4097))  # the window is 4,096
    [reset] = [e for e in peer.events if isinstance(e, StreamReset)]
    assert (reset.stream_id, reset.error_code) == (1, FLOW_CONTROL_ERROR)


def test_padding_counts_against_the_window_and_is_dropped() -> None:
    peer = Peer()
    peer.request()
    peer.respond(1, 200, b"payload", pad=200)
    assert peer.responses()[1].content == b"payload"
    assert peer.codec.receive_window == (1 << 24) - (len(b"payload") + 1 + 200)

    peer.request()
    block = hpack.Encoder().encode([(b":status", b"201")])
    padded = HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM", "PADDED"], pad_length=30)
    peer.feed(padded.serialize())
    assert peer.responses()[3].status_code == 201


# --- settings changed mid-stream ----------------------------------------------------------


def test_initial_window_size_lowered_and_raised_while_a_body_waits() -> None:
    peer = Peer({S.INITIAL_WINDOW_SIZE: 10})
    body = b"0123456789" * 10
    peer.request(body=body)
    assert sum(len(e.data) for e in peer.received(h2.events.DataReceived)) == 10
    peer.server.update_settings({S.INITIAL_WINDOW_SIZE: 0})  # 10 sent: window now -10
    peer.exchange()
    assert peer.codec.streams[1].send_window == -10
    peer.server.update_settings({S.INITIAL_WINDOW_SIZE: 1000})  # the delta applies: 990
    peer.exchange()
    assert b"".join(e.data for e in peer.received(h2.events.DataReceived)) == body
    assert peer.received(h2.events.StreamEnded)


def test_max_frame_size_decides_between_one_headers_frame_and_continuations() -> None:
    """Headers over MAX_FRAME_SIZE go out as HEADERS + CONTINUATION; after the server
    raises MAX_FRAME_SIZE, in one frame. h2 must read the same headers either way."""
    big = [("x-big", "v" * 20_000)]
    peer = Peer()
    peer.request(headers=big)
    peer.server.update_settings({S.MAX_FRAME_SIZE: 32_768})
    peer.exchange()
    peer.request(headers=big)
    first, second = peer.received(h2.events.RequestReceived)
    assert (b"x-big", b"v" * 20_000) in first.headers
    assert first.headers[3:] == second.headers[3:]  # the same but for :path's position
    assert peer.codec.peer_max_frame == 32_768


def test_continuation_frames_are_sent_back_to_back() -> None:
    codec = Peer().codec
    stream_id = codec.send_request("/p", encode_headers([("x-big", "v" * 40_000)]))
    out = codec.data_to_send()
    kinds = []
    while out:
        length, kind, flags, sid = struct.unpack(">I", b"\0" + out[:3])[0], out[3], out[4], out[5:9]
        kinds.append((kind, flags, int.from_bytes(sid, "big")))
        out = out[9 + length :]
    assert kinds == [(1, 0x1, stream_id), (9, 0, stream_id), (9, 0x4, stream_id)]


def test_max_concurrent_streams_going_down_holds_new_requests_back() -> None:
    peer = Peer({S.MAX_CONCURRENT_STREAMS: 10})
    ids = [peer.request() for _ in range(5)]
    assert peer.codec.available_streams == 5
    peer.server.update_settings({S.MAX_CONCURRENT_STREAMS: 2})
    peer.exchange()
    assert peer.codec.available_streams == 0
    with pytest.raises(NoStreamAvailable):
        peer.codec.send_request("/p", b"")
    for count, stream_id in enumerate(ids[:4], 1):
        peer.respond(stream_id)
        assert peer.codec.available_streams == max(0, 2 - (5 - count))
    peer.request()  # now within the limit, and h2 agrees
    assert len(peer.received(h2.events.RequestReceived)) == 6


def test_the_first_settings_say_the_connection_is_ready() -> None:
    codec = ClientCodec("push.example.com")
    codec.initiate()
    assert codec.available_streams == 0  # not before the server's preface
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(codec.data_to_send())
    [event] = codec.receive(server.data_to_send())
    assert isinstance(event, SettingsChanged) and event.first
    assert codec.available_streams == 100  # h2's default MAX_CONCURRENT_STREAMS


# --- continuation, resets, goaway, ping -----------------------------------------------------


def test_an_answer_in_headers_and_continuation_frames() -> None:
    peer = Peer()
    peer.request()
    headers = [(f"x-h{i}".encode(), b"v" * 1000) for i in range(40)]  # ~40 KB: 3 frames
    peer.respond(1, 200, b"", headers)
    assert len(peer.responses()[1].headers) == 40


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(0, 0, 1, b"x"), PROTOCOL_ERROR),  # DATA in the middle of a header block
        (frame(9, 0x4, 3, b""), PROTOCOL_ERROR),  # CONTINUATION of another stream
        (frame(6, 0, 0, b"\0" * 8), PROTOCOL_ERROR),  # PING in the middle
    ],
)
def test_a_header_block_may_only_be_continued(bad: bytes, code: int) -> None:
    peer = Peer()
    peer.request()
    peer.request()
    block = hpack.Encoder().encode([(b":status", b"200")])
    peer.feed(HeadersFrame(1, block[:1], flags=[]).serialize() + bad)
    assert peer.terminated().error_code == code


def test_headers_then_continuation_by_hand() -> None:
    peer = Peer()
    peer.request()
    block = hpack.Encoder().encode([(b":status", b"200"), (b"x-a", b"b" * 100)])
    peer.feed(
        HeadersFrame(1, block[:5], flags=["END_STREAM"]).serialize()
        + ContinuationFrame(1, block[5:50]).serialize()
        + ContinuationFrame(1, block[50:], flags=["END_HEADERS"]).serialize()
    )
    assert peer.responses()[1].headers == {"x-a": "b" * 100}


def test_refused_stream_is_unsent_and_other_resets_are_not() -> None:
    peer = Peer()
    peer.request()
    peer.request()
    peer.server.reset_stream(1, REFUSED_STREAM)
    peer.server.reset_stream(3, CANCEL)
    peer.exchange()
    resets = {e.stream_id: e for e in peer.events if isinstance(e, StreamReset)}
    assert (resets[1].unsent, resets[3].unsent) == (True, False)
    assert "REFUSED_STREAM" in resets[1].reason
    assert not peer.codec.streams


def test_goaway_with_debug_data_names_the_streams_not_processed() -> None:
    peer = Peer()
    ids = [peer.request() for _ in range(4)]  # 1, 3, 5, 7
    peer.server.close_connection(
        error_code=NO_ERROR, additional_data=b'{"reason":"Shutdown"}', last_stream_id=3
    )
    peer.exchange()
    [goaway] = [e for e in peer.events if isinstance(e, GoAway)]
    assert (goaway.last_stream_id, goaway.unprocessed) == (3, [5, 7])
    assert goaway.debug_data == b'{"reason":"Shutdown"}'
    assert peer.codec.available_streams == 0 and set(peer.codec.streams) == {1, 3}
    with pytest.raises(NoStreamAvailable):
        peer.codec.send_request("/p", b"")
    assert ids == [1, 3, 5, 7]


def test_a_second_goaway_may_only_lower_the_last_stream() -> None:
    peer = Peer()
    for _ in range(3):
        peer.request()
    peer.feed(frame(7, 0, 0, struct.pack(">II", LAST_STREAM_ID, 0)))
    peer.feed(frame(7, 0, 0, struct.pack(">II", 1, 0)))
    peer.feed(frame(7, 0, 0, struct.pack(">II", 5, 0)))
    goaways = [e for e in peer.events if isinstance(e, GoAway)]
    assert [(g.last_stream_id, g.unprocessed) for g in goaways] == [
        (LAST_STREAM_ID, []), (1, [3, 5]), (1, [])
    ]  # fmt: skip


def test_ping_both_ways() -> None:
    peer = Peer()
    peer.server.ping(b"server!!")
    peer.exchange()
    [ack] = peer.received(h2.events.PingAckReceived)
    assert ack.ping_data == b"server!!"
    peer.codec.ping(b"fanout!!")
    peer.exchange()
    assert [e.payload for e in peer.events if isinstance(e, PingAcknowledged)] == [b"fanout!!"]


def test_stream_ids_run_out_and_the_connection_takes_no_more() -> None:
    peer = Peer()
    peer.request()
    peer.codec.next_stream_id = LAST_STREAM_ID  # as after a billion requests
    assert peer.request() == LAST_STREAM_ID
    assert peer.received(h2.events.RequestReceived)[-1].stream_id == LAST_STREAM_ID
    assert peer.codec.available_streams == 0 and peer.codec.draining
    with pytest.raises(NoStreamAvailable):
        peer.codec.send_request("/p", b"")
    peer.respond(LAST_STREAM_ID)  # what is in flight still ends
    assert LAST_STREAM_ID in peer.responses()


def test_unknown_frames_and_priority_are_ignored() -> None:
    peer = Peer()
    peer.request()
    peer.feed(frame(0xFA, 0xFF, 1, b"whatever") + frame(2, 0, 1, b"\0\0\0\0\x10"))
    peer.respond(1)
    assert 1 in peer.responses()


# --- what the codec refuses to send ----------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        ("apns-topic", "a\r\nx-injected: 1"), ("apns-topic", "a\nb"), ("apns-topic", "a\rb"),
        ("apns-topic", "a\0b"), ("apns-topic", " leading"), ("apns-topic", "trailing\t"),
        ("Upper", "x"), ("bad name", "x"), ("", "x"), (":path", "/x"), ("connection", "close"),
        ("transfer-encoding", "chunked"), ("te", "gzip"),
    ],
)  # fmt: skip
def test_a_header_http2_forbids_is_refused_before_anything_is_sent(
    field: tuple[str, str],
) -> None:
    with pytest.raises(InvalidHeader):
        encode_headers([("content-type", "application/json"), field])


@pytest.mark.parametrize("path", ["/3/device/ab\r\nx: y", "/a\nb", "/a\0b", "/a b", "no-slash", ""])
def test_a_path_with_controls_is_refused_and_nothing_queued(path: str) -> None:
    peer = Peer()
    with pytest.raises(InvalidHeader):
        peer.codec.send_request(path, b"", b"{}")
    assert peer.codec.data_to_send() == b"" and not peer.codec.streams
    assert peer.codec.next_stream_id == 1


def test_te_trailers_is_the_one_te_allowed() -> None:
    assert encode_headers([("te", "trailers")])


# --- protocol errors from the server ----------------------------------------------------------


def _settings(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack(">HI", k, v) for k, v in pairs)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (frame(0, 0, 0, b"x"), PROTOCOL_ERROR),  # DATA on stream 0
        (frame(0, 0, 99, b"x"), PROTOCOL_ERROR),  # DATA on a stream never opened
        (frame(0, 0, 2, b"x"), PROTOCOL_ERROR),  # DATA on a server stream
        (frame(0, 0x8, 1, b"\x05abc"), PROTOCOL_ERROR),  # padding longer than the frame
        (frame(0, 0x8, 1, b""), FRAME_SIZE_ERROR),  # padded, without a pad length
        (frame(1, 0x4, 0, b"\x88"), PROTOCOL_ERROR),  # HEADERS on stream 0
        (frame(1, 0x4, 2, b"\x88"), PROTOCOL_ERROR),  # HEADERS on a server stream
        (frame(1, 0x4, 7, b"\x88"), PROTOCOL_ERROR),  # HEADERS on a stream never opened
        (frame(1, 0x4 | 0x8, 1, b"\x09\x88"), PROTOCOL_ERROR),  # HEADERS padding too long
        (frame(1, 0x4 | 0x20, 1, b"\0\0"), FRAME_SIZE_ERROR),  # PRIORITY flag, 2 bytes
        (frame(1, 0x4, 1, b"\xff\xff\xff\xff"), COMPRESSION_ERROR),  # not HPACK
        (frame(9, 0x4, 1, b"\x88"), PROTOCOL_ERROR),  # CONTINUATION without HEADERS
        (frame(0, 0, 1, b"x" * 16_385), FRAME_SIZE_ERROR),  # over our MAX_FRAME_SIZE
        (frame(4, 0, 0, b"\0\0\0\0\0"), FRAME_SIZE_ERROR),  # SETTINGS of 5 bytes
        (frame(4, 0x1, 0, b"\0" * 6), FRAME_SIZE_ERROR),  # SETTINGS ACK with a payload
        (frame(4, 0, 1, b""), PROTOCOL_ERROR),  # SETTINGS on a stream
        (frame(4, 0, 0, _settings((0x2, 1))), PROTOCOL_ERROR),  # ENABLE_PUSH from a server
        (frame(4, 0, 0, _settings((0x2, 7))), PROTOCOL_ERROR),  # ENABLE_PUSH not 0 or 1
        (frame(4, 0, 0, _settings((0x4, 2**31))), FLOW_CONTROL_ERROR),  # INITIAL_WINDOW_SIZE
        (frame(4, 0, 0, _settings((0x5, 16_383))), PROTOCOL_ERROR),  # MAX_FRAME_SIZE too small
        (frame(4, 0, 0, _settings((0x5, 2**24))), PROTOCOL_ERROR),  # MAX_FRAME_SIZE too big
        (frame(4, 0, 0, _settings((0x8, 2))), PROTOCOL_ERROR),  # ENABLE_CONNECT_PROTOCOL
        (frame(8, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),  # WINDOW_UPDATE of 0, connection
        (frame(8, 0, 0, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR),  # past 2^31-1
        (frame(8, 0, 0, b"\0\0\x01"), FRAME_SIZE_ERROR),  # WINDOW_UPDATE of 3 bytes
        (frame(8, 0, 9, b"\0\0\0\x01"), PROTOCOL_ERROR),  # WINDOW_UPDATE on an idle stream
        (frame(6, 0, 0, b"\0" * 7), FRAME_SIZE_ERROR),  # PING of 7 bytes
        (frame(6, 0, 1, b"\0" * 8), PROTOCOL_ERROR),  # PING on a stream
        (frame(7, 0, 1, b"\0" * 8), PROTOCOL_ERROR),  # GOAWAY on a stream
        (frame(7, 0, 0, b"\0" * 4), FRAME_SIZE_ERROR),  # GOAWAY of 4 bytes
        (frame(3, 0, 0, b"\0" * 4), PROTOCOL_ERROR),  # RST_STREAM on stream 0
        (frame(3, 0, 1, b"\0" * 5), FRAME_SIZE_ERROR),  # RST_STREAM of 5 bytes
        (frame(3, 0, 9, b"\0" * 4), PROTOCOL_ERROR),  # RST_STREAM on an idle stream
        (frame(2, 0, 0, b"\0" * 5), PROTOCOL_ERROR),  # PRIORITY on stream 0
        (PushPromiseFrame(1, promised_stream_id=2, data=b"\x82", flags=["END_HEADERS"]).serialize(), PROTOCOL_ERROR),
    ],
)  # fmt: skip
def test_a_protocol_error_from_the_server_ends_the_connection_with_its_code(
    raw: bytes, code: int
) -> None:
    peer = Peer()
    peer.request()
    peer.request()
    peer.feed(raw)
    terminated = peer.terminated()
    assert terminated.error_code == code
    assert terminated.stream_ids == [1, 3]  # both failed; the server may have processed them
    [ended] = peer.received(h2.events.ConnectionTerminated)  # our GOAWAY, as h2 read it
    assert ended.error_code == code
    assert peer.codec.terminated and peer.codec.available_streams == 0
    assert peer.codec.receive(frame(6, 0, 0, b"\0" * 8)) == []  # nothing is read after


def test_the_servers_first_frame_must_be_settings() -> None:
    codec = ClientCodec("push.example.com")
    codec.initiate()
    codec.data_to_send()
    [event] = codec.receive(frame(6, 0, 0, b"\0" * 8))
    assert isinstance(event, ConnectionTerminated) and event.error_code == PROTOCOL_ERROR
    assert b"first frame was not SETTINGS" in codec.data_to_send()  # GOAWAY's debug data


def _status_block(*fields: tuple[bytes, bytes]) -> bytes:
    return hpack.Encoder().encode(list(fields))


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        (frame(8, 0, 1, b"\0\0\0\0"), PROTOCOL_ERROR, "WINDOW_UPDATE of 0"),
        (frame(8, 0, 1, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR, "window past"),
        (frame(0, 0x1, 1, b"x"), PROTOCOL_ERROR, "DATA before the headers"),
        (frame(1, 0x5, 1, _status_block((b"x-a", b"1"))), PROTOCOL_ERROR, "without :status"),
        (frame(1, 0x5, 1, _status_block((b":status", b"2000"))), PROTOCOL_ERROR, ":status"),
        (frame(1, 0x5, 1, _status_block((b":status", b"200"), (b":path", b"/"))), PROTOCOL_ERROR, "pseudo-header"),
        (frame(1, 0x5, 1, _status_block((b":status", b"200"), (b"X-Up", b"1"))), PROTOCOL_ERROR, "upper-case"),
        (frame(1, 0x5, 1, _status_block((b":status", b"100"))), PROTOCOL_ERROR, "a final 100"),
        (frame(1, 0x4, 1, _status_block((b":status", b"200"), (b"content-length", b"5"))) + frame(0, 1, 1, b"abc"), PROTOCOL_ERROR, "content-length"),
        (frame(2, 0, 1, b"\0" * 4), FRAME_SIZE_ERROR, "PRIORITY"),
    ],
)  # fmt: skip
def test_a_breach_on_one_stream_resets_only_that_stream(raw: bytes, code: int, reason: str) -> None:
    peer = Peer()
    peer.request()
    peer.request()
    peer.feed(raw)
    [reset] = [e for e in peer.events if isinstance(e, StreamReset)]
    assert (reset.stream_id, reset.error_code, reset.unsent) == (1, code, False)
    assert reason in reset.reason
    assert [e.error_code for e in peer.received(h2.events.StreamReset)] == [code]
    peer.respond(3)  # the connection goes on
    assert 3 in peer.responses() and not peer.codec.terminated


def test_an_answer_too_large_to_hold_is_cancelled() -> None:
    peer = Peer()
    peer.request()
    peer.server.send_headers(1, [(b":status", b"200")])
    chunk = b"x" * 16_384
    for _ in range(MAX_BODY // len(chunk) + 1):
        peer.server.send_data(1, chunk)
        peer.exchange()
        if 1 not in peer.codec.streams:
            break
    [reset] = [e for e in peer.events if isinstance(e, StreamReset)]
    assert reset.error_code == CANCEL and "over" in reset.reason


def test_a_flood_of_continuation_frames_ends_the_connection() -> None:
    peer = Peer()
    peer.request()
    raw = HeadersFrame(1, b"\x00\x01a", flags=[]).serialize()
    raw += b"".join(ContinuationFrame(1, b"\x00" * 16_000).serialize() for _ in range(10))
    peer.feed(raw)
    assert peer.terminated().error_code == 0xB  # ENHANCE_YOUR_CALM


def test_data_on_a_stream_we_reset_still_counts_against_the_connection_window() -> None:
    peer = Peer()
    peer.request()
    peer.server.send_headers(1, [(b":status", b"200")])
    peer.exchange()
    before = peer.codec.receive_window
    peer.codec.reset_stream(1)
    peer.feed(DataFrame(1, b"x" * 1000).serialize())
    assert peer.codec.receive_window == before - 1000 and not peer.codec.terminated
