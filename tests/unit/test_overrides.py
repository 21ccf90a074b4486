from __future__ import annotations

import copy
from typing import Any

import pytest

from fanout.overrides import json_problems, merge_patch


# RFC 7396, Appendix A: every example, in order.
@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_does_what_rfc_7396_says(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_merge_patch_changes_neither_side() -> None:
    target, patch = {"aps": {"alert": {"title": "t"}}}, {"aps": {"alert": {"body": "b"}}}
    before = copy.deepcopy((target, patch))
    assert merge_patch(target, patch) == {"aps": {"alert": {"title": "t", "body": "b"}}}
    assert (target, patch) == before


def test_json_no_store_or_provider_can_encode_is_named_where_it_is() -> None:
    value = {"ok": [1, 2.5, "x", True, None], "big": 2**64, "list": [0, -(2**63) - 1]}
    assert [p["loc"] for p in json_problems(value, ("payload",))] == [
        ("payload", "big"),
        ("payload", "list", 1),
    ]
    assert json_problems({"u64": 2**64 - 1, "i64": -(2**63)}) == []
