"""A users or subscriptions CSV read as bulk/rows.py's ``csv_device_rows`` reads devices:
a plain line (no quote, no NUL: ``str.split(",")`` is what the csv module would read)
whose fields pass the kind's checks comes as its staging tuple already (row_of passes it
through), without a csv row, a dict or a call per field; any other line comes as
readers.csv_records's record, for row_of's verdict and reason. A header naming other
columns than rows.COLUMNS[kind] (or one twice): every row as csv_records reads it.
tests/unit/test_plain_csv.py holds it to csv_records + row_of over files of every kind of
line.

Why: reading and checking is the import's Python side, on the two cores PostgreSQL's
chunks need too. Reading, checking and hashing bench/import.py's 400,000 subscriptions
(CPU time, best of 3, the loaded 2-core machine): 2.76 us a row by csv_records and
row_of, 1.2 us this way.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from fanout.bulk.readers import Numbered
from fanout.bulk.rows import COLUMNS, csv_record, csv_rest
from fanout.identifiers import TOPIC_PATTERN, USER_ID_PATTERN

# identifiers.py's patterns, matched whole (fullmatch: $ would also match before a final
# newline).
_USER = re.compile(USER_ID_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
_TOPIC = re.compile(TOPIC_PATTERN.removeprefix("^").removesuffix("$")).fullmatch


def csv_key_rows(stream: BinaryIO, kind: str) -> Iterator[Numbered]:
    """The numbered records of a users or subscriptions CSV file, a plain valid line as
    its staging tuple (users: an attribute's empty field is absent, None; a filled one
    goes to row_of)."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    lines = iter(text)
    header_line = next(lines, None)
    if header_line is None:
        return
    header_reader = csv.reader(itertools.chain([header_line], lines))
    names = [name.strip() for name in next(header_reader, [])]
    number = header_reader.line_num
    keys = ("topic", "user_id") if kind == "subscriptions" else ("user_id",)
    if (
        len(set(names)) != len(names)
        or not set(COLUMNS[kind]).issuperset(names)
        or not set(keys).issubset(names)
    ):
        yield from csv_rest(names, lines, number)
        return
    width = len(names)
    user_at = names.index("user_id")
    topic_at = names.index("topic") if kind == "subscriptions" else -1
    # users: the attributes' columns, each to be empty on a plain line (None: absent).
    attributes = [i for i, name in enumerate(names) if name not in keys]
    absent = (None,) * (len(COLUMNS[kind]) - 1)
    user_ok, topic_ok = _USER, _TOPIC
    for raw in lines:
        number += 1
        if '"' in raw or "\x00" in raw:
            record, used = csv_record(names, raw, lines, number)
            number += used - 1
            if record is not None:
                yield number, record
            continue
        fields = raw.rstrip("\r\n").split(",")
        if fields == [""]:
            continue  # a blank line, which csv.reader skips
        if len(fields) != width:
            if len(fields) > width:
                yield number, f"{len(fields)} fields, the header names {width}"
                continue
            fields += [""] * (width - len(fields))
        user = fields[user_at]
        if user_ok(user):
            if topic_at >= 0:
                topic = fields[topic_at]
                if topic_ok(topic):
                    yield number, (number, topic, user)
                    continue
            elif not any(fields[i] for i in attributes):
                yield number, (number, user, *absent)
                continue
        yield number, _record(names, fields)


def _record(names: list[str], fields: list[str]) -> dict[str, Any]:
    return {n: v for n, v in zip(names, fields, strict=False) if v != ""}
