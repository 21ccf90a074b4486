"""HTTP/2's wire vocabulary (RFC 9113): frame types, flags, settings, error codes, and the
HPACK literals fanout sends (RFC 7541). No state and no I/O.

Requests are encoded as HPACK literals without indexing: no dynamic table to keep in
step with the server and nothing to Huffman-code. py-spy put ~40% of a client on the
``h2`` library in ``send_headers`` (HPACK with Huffman, header validation); these
literals cost a few hundred nanoseconds a request, and a request's header set is
encoded once and reused (``H2Client.header_block``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable

from fanout.errors import FanoutError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id
SETTING = struct.Struct(">HI")
U32 = struct.Struct(">I")
GOAWAY_HEAD = struct.Struct(">II")  # last stream id, error code

# Frame types (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
# Flags.
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Settings (RFC 9113 6.5.2, RFC 8441).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
ENABLE_CONNECT_PROTOCOL = 0x8

# Error codes (RFC 9113 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x4, 0x5, 0x6, 0x7
CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x9, 0xA, 0xB
INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = 0xC, 0xD
ERROR_NAMES = {
    NO_ERROR: "NO_ERROR", PROTOCOL_ERROR: "PROTOCOL_ERROR", INTERNAL_ERROR: "INTERNAL_ERROR",
    FLOW_CONTROL_ERROR: "FLOW_CONTROL_ERROR", SETTINGS_TIMEOUT: "SETTINGS_TIMEOUT",
    STREAM_CLOSED: "STREAM_CLOSED", FRAME_SIZE_ERROR: "FRAME_SIZE_ERROR",
    REFUSED_STREAM: "REFUSED_STREAM", CANCEL: "CANCEL", COMPRESSION_ERROR: "COMPRESSION_ERROR",
    CONNECT_ERROR: "CONNECT_ERROR", ENHANCE_YOUR_CALM: "ENHANCE_YOUR_CALM",
    INADEQUATE_SECURITY: "INADEQUATE_SECURITY", HTTP_1_1_REQUIRED: "HTTP_1_1_REQUIRED",
}  # fmt: skip

DEFAULT_WINDOW = 65_535  # every window's size until SETTINGS or WINDOW_UPDATE say otherwise
DEFAULT_MAX_FRAME = 16_384  # the smallest MAX_FRAME_SIZE, and the initial one
MAX_WINDOW = 2**31 - 1  # no flow-control window may exceed this (RFC 9113 6.9.1)
LARGEST_FRAME = 2**24 - 1
LAST_STREAM_ID = 2**31 - 1


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"0x{code:x}")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame, header and payload."""
    return FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream_id) + payload


class InvalidHeader(FanoutError, ValueError):
    """A header fanout was asked to send that HTTP/2 forbids; nothing was sent."""


# The static table's entries for names we send (RFC 7541 appendix A).
_STATIC_NAMES = {
    ":authority": 1, ":path": 4, "authorization": 23, "content-encoding": 26,
    "content-length": 28, "content-type": 31,
}  # fmt: skip
# A field name is a token (RFC 9110 5.6.2), lower case in HTTP/2 (RFC 9113 8.2.1).
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# A value must not hold NUL, CR or LF, nor start or end with whitespace (RFC 9113 8.2.1):
# a CR/LF smuggled into a value would split the header when a proxy speaks HTTP/1.1 on.
_BAD_VALUE = re.compile(r"[\x00\r\n]|\A[ \t]|[ \t]\Z")
# Connection-specific fields have no meaning in HTTP/2 (RFC 9113 8.2.2).
_CONNECTION_FIELDS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)


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
    """A header as an HPACK literal without indexing (RFC 7541 6.2.2), raw strings.
    Not validated: see ``encode_headers``."""
    raw = value.encode()
    tail = _integer(len(raw), 7, 0) + raw
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return _integer(index, 4, 0) + tail
    name_bytes = name.encode()
    return b"\x00" + _integer(len(name_bytes), 7, 0) + name_bytes + tail


def check_field(name: str, value: str) -> None:
    """Raise InvalidHeader unless HTTP/2 lets a client send this field."""
    if not _NAME.fullmatch(name):
        raise InvalidHeader(f"header name {name[:40]!r} is not a lower-case token")
    if name in _CONNECTION_FIELDS or (name == "te" and value != "trailers"):
        raise InvalidHeader(f"header {name!r} is connection-specific: not allowed in HTTP/2")
    if _BAD_VALUE.search(value):
        raise InvalidHeader(
            f"header {name!r}: value holds NUL, CR or LF, or starts or ends with whitespace"
        )


def encode_headers(fields: Iterable[tuple[str, str]]) -> bytes:
    """Regular (non-pseudo) request headers as HPACK literals, each checked first: a
    field HTTP/2 forbids raises InvalidHeader before anything is sent."""
    out = bytearray()
    for name, value in fields:
        check_field(name, value)
        out += encode_field(name, value)
    return bytes(out)


def check_path(path: str) -> None:
    """Raise InvalidHeader unless ``path`` can be a request's ``:path``: a URI's path and
    query, so no controls and no space (RFC 3986). ``isprintable`` (C) took a third of
    the time of a regular expression here, and this runs for every request."""
    if not path.startswith("/") or not path.isprintable() or " " in path:
        raise InvalidHeader(f"path {path[:60]!r} is not an origin-form path without controls")
