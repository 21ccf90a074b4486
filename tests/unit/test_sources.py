"""A source's query before it is stored: ``:key`` bound as the first parameter (a cast of its
own applies after it), a query without one or with more than one statement refused, the
column and prefix plain, and a plan's sequential scan found and quoted."""

from __future__ import annotations

import pytest

from fanout.sources import (
    SourceRefused,
    bind_key,
    check_column,
    check_prefix,
    sequential_scan,
)


@pytest.mark.parametrize(
    ("query", "bound"),
    [
        (
            "SELECT follower_id::text AS user_id FROM books.follows WHERE author_id = :key::bigint",
            "SELECT follower_id::text AS user_id FROM books.follows "
            "WHERE author_id = $1::text::bigint",
        ),
        (
            "SELECT u FROM t WHERE k = :key OR k2 = :key",
            "SELECT u FROM t WHERE k = $1::text OR k2 = $1::text",
        ),
        ("  SELECT u FROM t WHERE k=:key\n", "SELECT u FROM t WHERE k=$1::text"),
        # A cast to a type named key, and a longer name, are no :key.
        ("SELECT u::key FROM t WHERE k = :key", "SELECT u::key FROM t WHERE k = $1::text"),
        (
            "SELECT u FROM t WHERE k = :key AND x = :keys",
            "SELECT u FROM t WHERE k = $1::text AND x = :keys",
        ),
    ],
)
def test_key_is_bound_as_the_first_parameter(query: str, bound: str) -> None:
    assert bind_key(query) == bound


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("SELECT u FROM t", ":key"),
        ("SELECT u FROM t WHERE k = :keys", ":key"),
        ("SELECT u FROM t WHERE k = $1", "$ parameter"),
        ("SELECT u FROM t WHERE k = :key; DELETE FROM t", "one statement"),
        ("", "1 to"),
        ("SELECT u FROM t WHERE k = :key OR " + "x" * 10_000, "1 to"),
    ],
)
def test_a_query_that_cannot_be_bound_is_refused_saying_why(query: str, says: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        bind_key(query)
    assert refused.value.field == "query" and says in str(refused.value)


def test_columns_and_prefixes_are_plain() -> None:
    assert check_column("user_id") == "user_id"
    assert check_prefix("author:") == "author:"
    assert check_prefix("team.") == "team."
    for column in ("user id", 'x"', "1a", ""):
        with pytest.raises(SourceRefused, match="column name"):
            check_column(column)
    for prefix in ("author", ":", "a b:", "autor:'--", "team/", ""):
        with pytest.raises(SourceRefused) as refused:
            check_prefix(prefix)
        assert refused.value.field == "prefix"


def test_a_plans_sequential_scan_is_quoted() -> None:
    plan = [
        "Nested Loop  (cost=0.00..35.50 rows=10 width=32)",
        "  ->  Seq Scan on follows  (cost=10000000000.00..10000000035.50 rows=10 width=8)",
        "        Filter: (author_id = '7'::bigint)",
    ]
    assert sequential_scan(plan) == (
        "Seq Scan on follows  (cost=10000000000.00..10000000035.50 rows=10 width=8)"
    )
    assert sequential_scan(["Index Scan using follows_by_author on follows"]) is None
    assert sequential_scan(["Bitmap Heap Scan on follows", "  ->  Bitmap Index Scan"]) is None
