"""HPACK decoding (RFC 7541) for a client that turned the server's dynamic table off.

Why not ``hpack.Decoder``: decoding responses was the largest single cost of a push. Each
APNs answer carries a fresh ``apns-id`` (a Huffman-coded UUID) that fanout never reads,
and ``hpack.Decoder`` decoded it every time: 12.7 µs of CPU a response of ``:status`` +
``apns-id`` (21 µs with ``apns-unique-id``), against ~46 µs for the whole push
(bench/providers.py; docs/performance.md, "Delivery"). Here a value is Huffman-decoded
only when someone reads it (``Headers``), which is ``:status`` and ``content-length``
on every response and ``retry-after`` now and then.

That needs no dynamic table: the client advertises SETTINGS_HEADER_TABLE_SIZE 0 in its
preface, and since a server sends HEADERS only in answer to our requests, which follow
that SETTINGS frame, every response is encoded with the table off. A reference to a
dynamic entry, or a table size update above 0, is then the server's COMPRESSION_ERROR.

The Huffman decoder is the ``hpack`` package's own; tests/providers/
tests/unit/test_headers.py checks this decoder against ``hpack.Encoder`` and ``hpack.Decoder``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from hpack import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from fanout.errors import FanoutError

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE


class CompressionError(FanoutError):
    """The header block breaks HPACK, or uses the dynamic table we turned off."""


class RawValue:
    """A header value as it came: Huffman-coded or not, decoded on first read."""

    __slots__ = ("data", "huffman")

    def __init__(self, data: bytes, huffman: bool) -> None:
        self.data = data
        self.huffman = huffman

    def decode(self) -> bytes:
        if self.huffman:
            try:
                self.data = decode_huffman(self.data)
            except HPACKDecodingError as exc:
                raise CompressionError(f"Huffman: {exc}") from exc
            self.huffman = False
        return self.data


class Headers(Mapping[str, str]):
    """A response's regular headers (lower-case names), each value decoded when read."""

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields: dict[str, RawValue | str] = {}

    def add(self, name: str, value: RawValue) -> None:
        self._fields[name] = value

    def clear(self) -> None:
        self._fields.clear()

    def __getitem__(self, name: str) -> str:
        value = self._fields[name]
        if isinstance(value, RawValue):
            try:
                decoded = value.decode().decode(errors="replace")
            except CompressionError:  # found late, in a value only now read: unreadable
                decoded = "\ufffd"
            value = self._fields[name] = decoded
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({dict(self)!r})"


def decode_block(block: bytes) -> list[tuple[bytes, RawValue]]:
    """The fields of one header block, in order: names decoded, values left raw."""
    fields: list[tuple[bytes, RawValue]] = []
    at, end = 0, len(block)
    while at < end:
        first = block[at]
        if first & 0x80:  # indexed field
            index, at = _integer(block, at, 0x7F)
            name, value = _static(index)
            fields.append((name, RawValue(value, False)))
        elif first & 0xE0 == 0x20:  # dynamic table size update: only to 0, the size we set
            size, at = _integer(block, at, 0x1F)
            if size:
                raise CompressionError(f"a dynamic table of {size} bytes, but we set 0")
        else:  # a literal: with incremental indexing (6-bit index), without/never indexed (4)
            # With a table of size 0, indexing one evicts it at once: nothing is kept.
            index, at = _integer(block, at, 0x3F if first & 0x40 else 0x0F)
            if index:
                name = _static(index)[0]
            else:
                raw_name, at = _string(block, at)
                name = _name(raw_name)
            raw_value, at = _string(block, at)
            fields.append((name, raw_value))
    return fields


def _integer(block: bytes, at: int, mask: int) -> tuple[int, int]:
    """The integer at ``at`` (RFC 7541, 5.1) and where the next thing starts. Inline
    rather than ``hpack``'s decode_integer, which cost 3 µs a response on static names
    past the 4-bit prefix (``server``, ``date``)."""
    value = block[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    while True:
        if at >= len(block) or shift > 28:
            raise CompressionError("an integer cut short or too large")
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


# Literal names as sent -> decoded. With the table off a server sends a name it does not
# find in the static table (apns-id) as a literal every time; the same few bytes each time.
_NAMES: dict[tuple[bytes, bool], bytes] = {}
_MAX_NAMES = 256


def _name(raw: RawValue) -> bytes:
    key = (raw.data, raw.huffman)
    name = _NAMES.get(key)
    if name is None:
        name = raw.decode()
        if len(_NAMES) < _MAX_NAMES:
            _NAMES[key] = name
    return name


def _static(index: int) -> tuple[bytes, bytes]:
    if not 0 < index <= len(STATIC_TABLE):
        raise CompressionError(f"index {index} is not in the static table (dynamic table off)")
    return STATIC_TABLE[index - 1]


def _string(block: bytes, at: int) -> tuple[RawValue, int]:
    if at >= len(block):
        raise CompressionError("a header block that ends inside a field")
    huffman = bool(block[at] & 0x80)
    length, start = _integer(block, at, 0x7F)
    if start + length > len(block):
        raise CompressionError("a string longer than its header block")
    return RawValue(block[start : start + length], huffman), start + length
