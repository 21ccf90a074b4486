"""The response header decoder (providers/h2/headers.py) against the ``hpack`` package.

Whatever ``hpack.Encoder`` makes with the dynamic table off (our SETTINGS), our decoder
reads the same fields as ``hpack.Decoder``; what needs a dynamic table is refused.
"""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout.providers.h2.headers import CompressionError, Headers, decode_block

NAMES = st.sampled_from(
    [b"content-type", b"retry-after", b"apns-id", b"content-length", b"x-custom", b"date"]
) | st.binary(min_size=1, max_size=20).map(lambda b: b.hex().encode())  # fmt: skip
VALUES = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
FIELDS = st.lists(
    st.tuples(NAMES, VALUES, st.booleans()),  # (name, value, sensitive: never indexed)
    max_size=12,
)


def _encoder() -> hpack.Encoder:
    encoder = hpack.Encoder()
    encoder.header_table_size = 0  # what the server's encoder does on our SETTINGS
    return encoder


def _ours(block: bytes) -> list[tuple[bytes, bytes]]:
    return [(name, value.decode()) for name, value in decode_block(block)]


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(FIELDS, min_size=1, max_size=4), huffman=st.booleans())
def test_it_reads_what_hpack_reads(
    blocks: list[list[tuple[bytes, bytes, bool]]], huffman: bool
) -> None:
    encoder, reference = _encoder(), hpack.Decoder()
    for fields in blocks:
        block = encoder.encode(
            [
                (b":status", b"200"),
                *[
                    hpack.HeaderTuple(n, v) if not s else hpack.NeverIndexedHeaderTuple(n, v)
                    for n, v, s in fields
                ],
            ],
            huffman=huffman,
        )
        assert _ours(block) == [tuple(f) for f in reference.decode(block, raw=True)]


def test_values_are_decoded_only_when_read() -> None:
    """An unread value costs nothing, even one that is not valid Huffman."""
    block = bytes([0x88, 0x00, 0x07]) + b"apns-id" + bytes([0x80 | 2]) + b"\xff\xff"
    headers = Headers()
    for name, value in decode_block(block):
        if name != b":status":
            headers.add(name.decode(), value)
    assert list(headers) == ["apns-id"]  # no error until read, and then no exception
    assert headers["apns-id"] == "\ufffd"


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        (bytes([0x80 | 62]), "not in the static table"),  # the first dynamic index
        (bytes([0x80]), "not in the static table"),  # index 0 is never valid
        (bytes([0x3F, 0xE1, 0x1F]), "dynamic table of 4096"),  # a size update back to 4096
        (bytes([0x00, 0x05]) + b"ab", "longer than its header block"),
        (bytes([0x00]), "ends inside a field"),
        (bytes([0xFF, 0xFF]), None),  # an integer cut short
    ],
)
def test_what_needs_a_dynamic_table_or_breaks_hpack_is_refused(
    block: bytes, problem: str | None
) -> None:
    with pytest.raises(CompressionError, match=problem):
        list(decode_block(block))


def test_a_size_update_to_zero_is_accepted() -> None:
    assert _ours(bytes([0x20, 0x88])) == [(b":status", b"200")]
