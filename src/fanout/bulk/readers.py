"""Files as numbered records, streamed: memory stays flat whatever their size.

A record is a dict of the row's fields, numbered by its line in the file (a CSV header is
line 1, so the first row is line 2; a CSV field quoted across lines is numbered by the
line it ends on). A line that cannot be read (bad JSON, not an object) is a string: the
reason, so that it is rejected with its line like any other bad row.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, BinaryIO

import orjson

GZIP_MAGIC = b"\x1f\x8b"

# A record, the reason it cannot be read, or (bulk/rows.py csv_device_rows) its staging tuple.
Numbered = tuple[int, dict[str, Any] | str | tuple[Any, ...]]


def open_input(path: str) -> BinaryIO:
    """The file at ``path`` (``-``: stdin) as bytes, gunzipped if it starts with gzip's
    magic bytes (whatever its name)."""
    raw: io.BufferedReader
    if path == "-":
        raw = (
            sys.stdin.buffer
            if isinstance(sys.stdin.buffer, io.BufferedReader)
            else (
                io.BufferedReader(sys.stdin.buffer)  # type: ignore[arg-type]
            )
        )
    else:
        raw = open(path, "rb")  # noqa: SIM115 - the caller closes it
    if raw.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def format_of(path: str, given: str | None) -> str:
    """``given``, or what the name says (.ndjson, .jsonl, .json, also under .gz), or csv."""
    if given:
        return given
    name = path.lower().removesuffix(".gz")
    return "ndjson" if name.endswith((".ndjson", ".jsonl", ".json")) else "csv"


def csv_records(stream: BinaryIO) -> Iterator[Numbered]:
    """The rows of a CSV file with a header line, as dicts by the header's names; empty
    fields are absent (a CSV cannot tell an empty string from nothing)."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    names = [name.strip() for name in header]
    for row in reader:
        if not row:
            continue
        if len(row) > len(names):
            yield reader.line_num, f"{len(row)} fields, the header names {len(names)}"
            continue
        yield reader.line_num, {n: v for n, v in zip(names, row, strict=False) if v != ""}


def ndjson_record(line: bytes) -> dict[str, Any] | str | None:
    """One NDJSON line as a record; None for a blank line, a string (the reason) for one
    that is not a JSON object."""
    if not line.strip():
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc.msg}"
    if not isinstance(value, dict):
        return "not a JSON object"
    return {k: v for k, v in value.items() if v is not None}


def ndjson_records(lines: Iterable[bytes]) -> Iterator[Numbered]:
    """The records of NDJSON lines, numbered from 1; blank lines skipped (not rejected)."""
    for number, line in enumerate(lines, start=1):
        record = ndjson_record(line)
        if record is not None:
            yield number, record


def records(stream: BinaryIO, fmt: str) -> Iterator[Numbered]:
    """The numbered records of a CSV or NDJSON stream."""
    return csv_records(stream) if fmt == "csv" else ndjson_records(stream)


async def _inflated(chunks: AsyncIterator[bytes], gzipped: bool) -> AsyncIterator[bytes]:
    """The body's bytes, inflated if gzipped, at most 1 MiB at a time (a small gzip that
    inflates to gigabytes is never held whole)."""
    if not gzipped:
        async for chunk in chunks:
            yield chunk
        return
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    async for chunk in chunks:
        data = inflater.decompress(chunk, 1 << 20)
        yield data
        while inflater.unconsumed_tail:
            yield inflater.decompress(inflater.unconsumed_tail, 1 << 20)
    yield inflater.flush()


async def ndjson_body_records(
    chunks: AsyncIterator[bytes], *, gzipped: bool = False, max_line: int = 1 << 20
) -> AsyncIterator[Numbered]:
    """The records of an NDJSON body arriving in chunks (an HTTP request), split into
    lines as they come; gzip (Content-Encoding) inflated on the way. A line longer than
    ``max_line`` bytes is rejected, not held: memory stays bounded."""
    pending = b""
    number = 0
    overlong = False
    async for data in _inflated(chunks, gzipped):
        *complete, pending = (pending + data).split(b"\n")
        for line in complete:
            number += 1
            if overlong or len(line) > max_line:
                overlong = False
                yield number, f"longer than {max_line} bytes"
                continue
            record = ndjson_record(line)
            if record is not None:
                yield number, record
        if len(pending) > max_line:
            pending, overlong = b"", True
    if overlong:
        yield number + 1, f"longer than {max_line} bytes"
    elif (record := ndjson_record(pending)) is not None:
        yield number + 1, record
