"""bulk/plain_csv.py: a users or subscriptions CSV read line by line gives what the csv
module and row_of give, a plain valid line already as its staging tuple."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest

from fanout.bulk.plain_csv import csv_key_rows
from fanout.bulk.readers import csv_records
from fanout.bulk.rows import RowError, row_of


def _verdicts(kind: str, numbered: Any) -> list[tuple[int, tuple[Any, ...] | str]]:
    out: list[tuple[int, tuple[Any, ...] | str]] = []
    for line, record in numbered:
        try:
            out.append((line, row_of(kind, line, record, None)))
        except RowError as exc:
            out.append((line, f"refused: {exc}"))
    return out


VALUES = {
    "user_id": ["u1", "user-42", "a.b@c:d-e_f", "", " u1", "-lead", "x" * 129, "é", "u,1"],
    "topic": ["author:7", "t", "", "bad topic", "x" * 129, ":lead", "t,2"],
    "tags": ["", "{}", '{"plan": "premium"}', "[1]", "not json", '{"n": 1}'],
}


def _field(value: str, rng: random.Random) -> str:
    if any(c in value for c in ',"\r\n') or rng.random() < 0.05:
        return '"' + value.replace('"', '""') + '"'
    return value


def _file(columns: list[str], seed: int) -> bytes:
    rng = random.Random(seed)
    lines = [",".join(columns)]
    for _ in range(3000):
        lines.append(
            ",".join(_field(rng.choice(VALUES.get(c.strip(), ["v"])), rng) for c in columns)
        )
    lines += ["", "   ", "u1,t,one-too-many,x", "u1", '"u2","t"', 'u3,"two\nlines"', "u4,t\r"]
    text = "\r\n".join(lines[:5]) + "\n" + "\n".join(lines[5:]) + "\n"
    return ("\ufeff" + text).encode()


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("subscriptions", ["topic", "user_id"]),
        ("subscriptions", ["user_id", "topic"]),
        ("subscriptions", [" topic", "user_id "]),  # names are stripped
        ("subscriptions", ["topic", "user_id", "extra"]),  # a column of no field
        ("subscriptions", ["topic", "topic"]),  # one named twice
        ("users", ["user_id"]),
        ("users", ["user_id", "tags"]),
        ("users", ["tags", "user_id"]),
        ("users", ["tags"]),  # no user_id column
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(v),
)
def test_the_plain_csv_reader_gives_what_the_csv_module_and_row_of_give(
    kind: str, columns: list[str]
) -> None:
    data = _file(columns, len(columns))
    expected = _verdicts(kind, csv_records(io.BytesIO(data)))
    assert _verdicts(kind, csv_key_rows(io.BytesIO(data), kind)) == expected
    assert len(expected) > 2000


def test_plain_lines_come_as_staging_tuples() -> None:
    subscriptions = b"topic,user_id\nauthor:7,u1\nauthor:8,u2\n"
    assert list(csv_key_rows(io.BytesIO(subscriptions), "subscriptions")) == [
        (2, (2, "author:7", "u1")),
        (3, (3, "author:8", "u2")),
    ]
    users = b"user_id,tags\nu1,\nu2,{}\n"
    assert list(csv_key_rows(io.BytesIO(users), "users")) == [
        (2, (2, "u1", None)),
        (3, {"user_id": "u2", "tags": "{}"}),  # a filled attribute: row_of's to check
    ]


def test_an_empty_file_has_no_rows() -> None:
    assert list(csv_key_rows(io.BytesIO(b""), "users")) == []
