"""bulk/readers.py: files as numbered records, gzip found by its magic bytes."""

from __future__ import annotations

import gzip
import io
from collections.abc import AsyncIterator
from pathlib import Path

from fanout.bulk.readers import (
    csv_records,
    format_of,
    ndjson_body_records,
    ndjson_records,
    open_input,
)


def test_csv_rows_are_numbered_by_their_line_and_empty_fields_are_absent() -> None:
    data = b'user_id,locale\nu1,de\n\nu2,\n"u\n3",fr\nu4,x,extra\n'
    assert list(csv_records(io.BytesIO(data))) == [
        (2, {"user_id": "u1", "locale": "de"}),
        (4, {"user_id": "u2"}),
        (6, {"user_id": "u\n3", "locale": "fr"}),
        (7, "3 fields, the header names 2"),
    ]


def test_a_byte_order_mark_is_not_part_of_the_first_column() -> None:
    assert list(csv_records(io.BytesIO(b"\xef\xbb\xbfuser_id\nu1\n"))) == [(2, {"user_id": "u1"})]


def test_ndjson_lines_that_are_not_objects_are_reasons_and_blank_lines_are_skipped() -> None:
    lines = [b'{"user_id": "u1", "locale": null}\n', b"\n", b"[1]\n", b"{oops\n"]
    numbered = list(ndjson_records(lines))
    assert numbered[0] == (1, {"user_id": "u1"})
    assert numbered[1] == (3, "not a JSON object")
    assert numbered[2][0] == 4 and str(numbered[2][1]).startswith("not JSON")


def test_gzip_is_found_by_its_magic_bytes_whatever_the_name(tmp_path: Path) -> None:
    plain, zipped = tmp_path / "a.csv.gz", tmp_path / "b.csv"
    plain.write_bytes(b"user_id\nu1\n")  # named .gz, not gzipped
    zipped.write_bytes(gzip.compress(b"user_id\nu1\n"))  # gzipped, named .csv
    for path in (plain, zipped):
        with open_input(str(path)) as stream:
            assert list(csv_records(stream)) == [(2, {"user_id": "u1"})]


def test_the_format_comes_from_the_option_else_the_name() -> None:
    assert format_of("x.ndjson.gz", None) == "ndjson"
    assert format_of("x.jsonl", None) == "ndjson"
    assert format_of("x.csv.gz", None) == "csv"
    assert format_of("-", None) == "csv"
    assert format_of("x.csv", "ndjson") == "ndjson"


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_a_body_split_anywhere_gives_the_same_lines() -> None:
    body = b'{"user_id": "u1"}\n\n{"user_id": "u2"}\n{"user_id": "u3"}'
    for cut in range(1, len(body)):
        got = [r async for r in ndjson_body_records(_chunks(body[:cut], body[cut:]))]
        assert got == [(1, {"user_id": "u1"}), (3, {"user_id": "u2"}), (4, {"user_id": "u3"})]


async def test_a_gzipped_body_is_inflated_and_an_overlong_line_is_rejected_not_held() -> None:
    body = gzip.compress(b'{"user_id": "u1"}\n' + b"x" * 5000 + b'\n{"user_id": "u2"}\n')
    got = [
        r
        async for r in ndjson_body_records(
            _chunks(body[:10], body[10:]), gzipped=True, max_line=100
        )
    ]
    assert got == [(1, {"user_id": "u1"}), (2, "longer than 100 bytes"), (3, {"user_id": "u2"})]
