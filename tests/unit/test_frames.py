"""Properties of the HTTP/2 codec's frame parser and HPACK literals (hypothesis).

The server's bytes are made by the ``h2`` library, or are arbitrary: however they are
cut into reads, the codec must see the same answers; whatever they hold, it must answer
with events or a connection error, never an exception of its own.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fanout.providers.h2.codec import ClientCodec
from fanout.providers.h2.events import ConnectionTerminated, Response
from fanout.providers.h2.frames import (
    ERROR_NAMES,
    FRAME_HEADER,
    GOAWAY,
    InvalidHeader,
    encode_field,
    encode_headers,
    frame,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=30
)
VALUE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00\r\n"), max_size=300
).map(str.strip)  # fmt: skip
# h2 drops connection-specific fields from what it sends; content-length must be the body's.
NOT_SENT_BY_H2 = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "content-length",
}
ANSWER = st.tuples(
    st.integers(200, 599),
    st.lists(st.tuples(TOKEN.filter(lambda t: t not in NOT_SENT_BY_H2), st.binary(max_size=50).map(bytes.hex)), max_size=5),
    st.binary(max_size=3000),
    st.none() | st.integers(0, 255),  # padding
)  # fmt: skip


def _connected(count: int) -> tuple[ClientCodec, h2.connection.H2Connection]:
    """A codec with ``count`` requests open on an h2 server; the server's reply bytes
    so far already read."""
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    codec = ClientCodec("push.example.com")
    codec.initiate()
    server.receive_data(codec.data_to_send())
    codec.receive(server.data_to_send())
    for _ in range(count):
        codec.send_request("/3/device/ab", encode_headers([("x-a", "1")]), b"{}")
    server.receive_data(codec.data_to_send())
    codec.receive(server.data_to_send())
    server.receive_data(codec.data_to_send())
    return codec, server


@SETTINGS
@given(
    answers=st.lists(ANSWER, min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 2000), max_size=40),
)
def test_however_the_bytes_are_cut_the_same_answers_come_out(
    answers: list[tuple[int, list[tuple[str, str]], bytes, int | None]], cuts: list[int]
) -> None:
    codec, server = _connected(len(answers))
    expected = {}
    for i, (status, headers, body, pad) in enumerate(answers):
        stream_id = 2 * i + 1
        fields = [(b":status", str(status).encode())] + [
            (k.encode(), v.encode()) for k, v in headers
        ]
        server.send_headers(stream_id, fields, end_stream=not body)
        if body:
            server.send_data(stream_id, body, end_stream=True, pad_length=pad)
        expected[stream_id] = (status, dict(headers), body)
    wire = server.data_to_send()
    got: dict[int, tuple[int, dict[str, str], bytes]] = {}
    position = 0
    for cut in [*cuts, len(wire)]:
        for event in codec.receive(wire[position : position + cut]):
            assert isinstance(event, Response), event
            got[event.stream_id] = (event.status_code, event.headers, event.content)
        position += cut
    assert got == expected


FRAMES = st.lists(
    st.tuples(
        st.integers(0, 12),  # type: every known one, and a few unknown
        st.integers(0, 255),  # flags
        st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1, 2**31 + 1]),  # stream id, R bit too
        st.binary(max_size=40),
    ),
    max_size=12,
)


@SETTINGS
@given(frames=FRAMES, cut=st.integers(1, 64))
def test_arbitrary_frames_give_events_or_a_connection_error_never_an_exception(
    frames: list[tuple[int, int, int, bytes]], cut: int
) -> None:
    codec, _server = _connected(2)
    codec.data_to_send()
    wire = b"".join(
        FRAME_HEADER.pack(len(p) << 8 | kind, flags, sid) + p for kind, flags, sid, p in frames
    )
    events = []
    for start in range(0, len(wire), cut):
        events += codec.receive(wire[start : start + cut])
    ended = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert len(ended) <= 1
    if ended:
        assert codec.terminated and codec.available_streams == 0
        assert events[-1] is ended[0]  # nothing is read after a connection error
        kind, payload = _last_frame(codec.data_to_send())
        assert kind == GOAWAY  # the last thing said: GOAWAY with the error's code
        assert struct.unpack_from(">I", payload, 4)[0] == ended[0].error_code in ERROR_NAMES


def _last_frame(out: bytes) -> tuple[int, bytes]:
    position = 0
    while True:
        length = int.from_bytes(out[position : position + 3], "big")
        if position + 9 + length == len(out):
            return out[position + 3], out[position + 9 :]
        position += 9 + length


@SETTINGS
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_after_the_preface_never_raise(data: bytes) -> None:
    codec, _server = _connected(1)
    events = codec.receive(data)
    assert all(not isinstance(e, ConnectionTerminated) for e in events[:-1])


@SETTINGS
@given(fields=st.lists(st.tuples(TOKEN, VALUE), max_size=8))
def test_hpack_literals_decode_to_what_was_sent(fields: list[tuple[str, str]]) -> None:
    fields = [(k, v) for k, v in fields if not (k == "te" and v != "trailers")]
    fields = [
        f
        for f in fields
        if f[0]
        not in ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
    ]
    decoded = hpack.Decoder().decode(encode_headers(fields))
    assert decoded == fields


@SETTINGS
@given(
    name=st.sampled_from([":path", ":authority", "authorization", "x-long"]),
    size=st.integers(0, 70_000),
)
def test_hpack_integers_of_any_size_round_trip(name: str, size: int) -> None:
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    assert decoder.decode(encode_field(name, "v" * size)) == [(name, "v" * size)]


@SETTINGS
@given(before=VALUE, bad=st.sampled_from(["\r", "\n", "\0", "\r\n"]), after=VALUE)
def test_a_value_holding_cr_lf_or_nul_is_always_refused(before: str, bad: str, after: str) -> None:
    try:
        encode_headers([("x-a", before + bad + after)])
    except InvalidHeader:
        return
    raise AssertionError("sent a header value holding CR, LF or NUL")


def test_frame_builds_what_hyperframe_reads() -> None:
    from hyperframe.frame import Frame

    raw = frame(0, 0x1, 7, b"abc")
    parsed, length = Frame.parse_frame_header(memoryview(raw[:9]))
    parsed.parse_body(memoryview(raw[9:]))
    assert (type(parsed).__name__, parsed.stream_id, parsed.data, length) == (
        "DataFrame",
        7,
        b"abc",
        3,
    )
    assert "END_STREAM" in parsed.flags
