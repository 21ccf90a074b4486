"""Tags and tag filters: what a publish's filter may say, the form it is compiled into,
and the decision the page query's SQL is held to (tests/integration/test_tag_filters.py)."""

from __future__ import annotations

from typing import Any

import pytest

from fanout.tags import MAX_TAGS, InvalidTags, check_tags, compile_filter, matches


def test_a_flat_map_of_scalars_is_taken_as_given() -> None:
    tags = {"plan": "premium", "age": 31, "score": 2.5, "beta": True}
    assert check_tags(tags) == tags


@pytest.mark.parametrize(
    ("tags", "path"),
    [
        ({"nested": {"a": 1}}, ("tags", "nested")),
        ({"list": [1]}, ("tags", "list")),
        ({"none": None}, ("tags", "none")),
        ({"": 1}, ("tags", "")),
        ({"x" * 65: 1}, ("tags", "x" * 65)),
        ({"long": "v" * 257}, ("tags", "long")),
        ({"huge": 2**64}, ("tags", "huge")),
        ({"huge": 1e30}, ("tags", "huge")),
        ({"nan": float("nan")}, ("tags", "nan")),
        ({"nul": "a\x00b"}, ("tags", "nul")),
        ({"a\x00": 1}, ("tags", "a\x00")),
        ({f"t{i}": i for i in range(MAX_TAGS + 1)}, ("tags",)),
        ("premium", ("tags",)),
    ],
)
def test_a_tag_map_that_is_not_flat_or_bounded_is_refused_naming_the_field(
    tags: Any, path: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidTags) as refused:
        check_tags(tags)
    assert refused.value.path == path


def test_no_filter_and_an_empty_one_compile_to_none() -> None:
    assert compile_filter(None) is None
    assert compile_filter({}) is None
    assert compile_filter({"tags": {}}) is None


def test_equalities_compile_to_one_containment_and_the_rest_to_conditions() -> None:
    compiled = compile_filter(
        {
            "tags": {
                "plan": "premium",
                "beta": {"eq": True},
                "country": {"in": ["DE", "AT"]},
                "age": {"gte": 18, "lt": 65},
                "churned": {"exists": False},
            }
        }
    )
    assert compiled == {
        "eq": {"plan": "premium", "beta": True},
        "conds": [
            {"key": "country", "op": "in", "value": ["DE", "AT"]},
            {"key": "age", "op": "gte", "value": 18},
            {"key": "age", "op": "lt", "value": 65},
            {"key": "churned", "op": "exists", "value": False},
        ],
    }


@pytest.mark.parametrize(
    ("given", "path"),
    [
        ("plan", ("filter",)),
        ({"segment": "x"}, ("filter", "segment")),
        ({"tags": ["plan"]}, ("filter", "tags")),
        ({"tags": {"plan": {"like": "p%"}}}, ("filter", "tags", "plan", "like")),
        ({"tags": {"plan": {}}}, ("filter", "tags", "plan")),
        ({"tags": {"age": {"gte": "18"}}}, ("filter", "tags", "age", "gte")),
        ({"tags": {"age": {"gte": True}}}, ("filter", "tags", "age", "gte")),
        ({"tags": {"country": {"in": []}}}, ("filter", "tags", "country", "in")),
        ({"tags": {"country": {"in": "DE"}}}, ("filter", "tags", "country", "in")),
        ({"tags": {"country": {"in": ["DE", {"x": 1}]}}}, ("filter", "tags", "country", "in", 1)),
        ({"tags": {"churned": {"exists": 1}}}, ("filter", "tags", "churned", "exists")),
        ({"tags": {"plan": None}}, ("filter", "tags", "plan")),
        ({"tags": None}, ("filter", "tags")),
    ],
)
def test_a_filter_that_cannot_be_evaluated_is_refused_naming_the_field_path(
    given: Any, path: tuple[str | int, ...]
) -> None:
    with pytest.raises(InvalidTags) as refused:
        compile_filter(given)
    assert refused.value.path == path


USERS: dict[str, dict[str, Any]] = {
    "a": {"plan": "premium", "country": "DE", "age": 31},
    "b": {"plan": "free", "country": "AT", "age": 17},
    "c": {"plan": "premium", "country": "FR", "age": 18, "beta": True},
    "d": {"plan": "premium", "age": "18"},  # a string is not a number
    "e": {},
}


@pytest.mark.parametrize(
    ("tags", "chosen"),
    [
        ({"plan": "premium"}, "acd"),
        ({"plan": {"eq": "free"}}, "b"),
        ({"country": {"in": ["DE", "AT"]}}, "ab"),
        ({"age": {"gt": 18}}, "a"),
        ({"age": {"gte": 18}}, "ac"),
        ({"age": {"lt": 18}}, "b"),
        ({"age": {"lte": 18}}, "bc"),
        ({"beta": {"exists": True}}, "c"),
        ({"beta": {"exists": False}}, "abde"),
        ({"beta": True}, "c"),
        ({"beta": 1}, ""),  # as jsonb: true is not 1
        ({"plan": "premium", "age": {"gte": 18}, "country": {"in": ["DE", "FR"]}}, "ac"),
    ],
)
def test_each_operator_chooses_the_users_it_says(tags: dict[str, Any], chosen: str) -> None:
    compiled = compile_filter({"tags": tags})
    assert compiled is not None
    assert "".join(u for u, t in USERS.items() if matches(t, compiled)) == chosen
