"""The export's formats: the columns bulk/rows.py's COLUMNS names, which the import
reads back (export then import changes 0 rows)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from fanout.bulk.rows import COLUMNS


class RecordWriter:
    """Writes records of one kind to a text stream as CSV (with a header) or NDJSON
    (absent and null fields left out)."""

    def __init__(self, out: TextIO, *, kind: str, fmt: str) -> None:
        self._out = out
        self._fmt = fmt
        self._columns = COLUMNS[kind]
        self._csv: Any = None
        if fmt == "csv":
            self._csv = csv.writer(out, lineterminator="\n")
            self._csv.writerow(self._columns)

    def write(self, records: Iterable[dict[str, Any]]) -> int:
        """Write these records; how many."""
        written = 0
        for record in records:
            if self._csv is not None:
                row = ["" if record.get(c) is None else record[c] for c in self._columns]
                self._csv.writerow(row)
            else:
                line = {c: record[c] for c in self._columns if record.get(c) is not None}
                self._out.write(orjson.dumps(line).decode())
                self._out.write("\n")
            written += 1
        return written
