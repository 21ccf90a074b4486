"""Users' tags and the tag filters a publish can carry (issue #25).

A user's tags are a flat map of string, number or boolean values, bounded in count and
size. A publish's ``filter`` (``{"tags": {"plan": "premium", "country": {"in": ["DE"]},
"age": {"gte": 18}}}``) is checked here and compiled into one JSON document that a fixed
SQL condition (``store.fragments``'s ``filtered`` rule) evaluates in PostgreSQL, in the
fan-out's page query: no statement is built per event, and no user is loaded into Python.

The compiled form: ``{"eq": {tag: value, ...}, "conds": [{"key": tag, "op": op,
"value": v}, ...]}``. Equalities go into ``eq``, tested with jsonb containment
(``tags @> eq``); the other operators are conditions on ``tags -> key``.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from fanout.errors import FanoutError

# Bounds: a tag map is read per recipient by the page query; a few dozen short tags is what
# targeting needs (OneSignal's own limit is 100 tags per user).
MAX_TAGS = 100
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 256
MAX_FILTER_TAGS = 20
MAX_IN_VALUES = 100

OPERATORS = ("eq", "in", "gt", "gte", "lt", "lte", "exists")
_COMPARE = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_ORDERED = tuple(_COMPARE)

TagValue = str | int | float | bool


class InvalidTags(FanoutError, ValueError):
    """A tag map or filter that cannot be taken; ``path`` names the field (the body's
    location, e.g. ``("filter", "tags", "age", "gte")``)."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | bool | int | float)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_key(key: object, path: tuple[str | int, ...]) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidTags(path, "a tag name is a non-empty string")
    if len(key) > MAX_TAG_KEY:
        raise InvalidTags(path, f"a tag name is at most {MAX_TAG_KEY} characters")
    if "\x00" in key:  # PostgreSQL's jsonb refuses NUL in text
        raise InvalidTags(path, "a tag name has no NUL character")
    return key


def _check_value(value: object, path: tuple[str | int, ...]) -> TagValue:
    if not _is_scalar(value):
        raise InvalidTags(path, "a tag value is a string, a number or a boolean")
    if isinstance(value, float) and not math.isfinite(value):  # NaN, inf: not JSON
        raise InvalidTags(path, "a tag value is a finite number")
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not -(2**63) <= value <= 2**63 - 1
    ):
        raise InvalidTags(path, "a tag value is a number within 64 bits")
    if isinstance(value, str) and len(value) > MAX_TAG_VALUE:
        raise InvalidTags(path, f"a tag value is at most {MAX_TAG_VALUE} characters")
    if isinstance(value, str) and "\x00" in value:  # PostgreSQL's jsonb refuses NUL in text
        raise InvalidTags(path, "a tag value has no NUL character")
    assert isinstance(value, str | bool | int | float)
    return value


def check_tags(tags: object, *, path: tuple[str | int, ...] = ("tags",)) -> dict[str, TagValue]:
    """A user's tags as given, checked: a flat map of at most ``MAX_TAGS`` names to string,
    number or boolean values (so at most ~100 KB). Raises ``InvalidTags``
    naming the field."""
    if not isinstance(tags, dict):
        raise InvalidTags(path, "tags are an object of name: value")
    if len(tags) > MAX_TAGS:
        raise InvalidTags(path, f"at most {MAX_TAGS} tags per user")
    return {
        _check_key(k, (*path, str(k))): _check_value(v, (*path, str(k))) for k, v in tags.items()
    }


def compile_filter(
    given: object, *, path: tuple[str | int, ...] = ("filter",)
) -> dict[str, Any] | None:
    """A publish's ``filter`` checked and compiled into the form the page query evaluates
    (see the module's docstring); None for no filter (absent or no tag condition).
    Raises ``InvalidTags`` naming the field path."""
    if given is None:
        return None
    if not isinstance(given, dict):
        raise InvalidTags(path, 'a filter is an object: {"tags": {...}}')
    unknown = sorted(set(given) - {"tags"})
    if unknown:
        raise InvalidTags((*path, unknown[0]), "unknown filter; only tags can be filtered on")
    if "tags" not in given:
        return None
    tags = given["tags"]
    path = (*path, "tags")
    if not isinstance(tags, dict):
        raise InvalidTags(path, "tags are an object of name: condition")
    if len(tags) > MAX_FILTER_TAGS:
        raise InvalidTags(path, f"at most {MAX_FILTER_TAGS} tags per filter")
    eq: dict[str, TagValue] = {}
    conds: list[dict[str, Any]] = []
    for key, condition in tags.items():
        at = (*path, str(key))
        _check_key(key, at)
        if not isinstance(condition, dict):
            eq[key] = _check_value(condition, at)
            continue
        if not condition:
            raise InvalidTags(at, f"a condition names an operator: one of {', '.join(OPERATORS)}")
        for op, operand in condition.items():
            here = (*at, str(op))
            if op == "eq":
                eq[key] = _check_value(operand, here)
            elif op == "in":
                if not isinstance(operand, list) or not operand:
                    raise InvalidTags(here, "in takes a non-empty list of values")
                if len(operand) > MAX_IN_VALUES:
                    raise InvalidTags(here, f"in takes at most {MAX_IN_VALUES} values")
                values = [_check_value(v, (*here, i)) for i, v in enumerate(operand)]
                conds.append({"key": key, "op": "in", "value": values})
            elif op in _ORDERED:
                if not _is_number(operand):
                    raise InvalidTags(here, f"{op} compares numbers: give a number")
                conds.append({"key": key, "op": op, "value": operand})
            elif op == "exists":
                if not isinstance(operand, bool):
                    raise InvalidTags(here, "exists takes true or false")
                conds.append({"key": key, "op": "exists", "value": operand})
            else:
                raise InvalidTags(here, f"unknown operator {op!r}: one of {', '.join(OPERATORS)}")
    if not eq and not conds:
        return None
    return {"eq": eq, "conds": conds}


def matches(tags: dict[str, TagValue], compiled: dict[str, Any]) -> bool:
    """What the page query's condition decides, in Python: the reference the tests hold the
    SQL to (never used on the fan-out's path)."""
    for key, value in compiled["eq"].items():
        if key not in tags or not _json_equal(tags[key], value):
            return False
    for cond in compiled["conds"]:
        key, op, value = cond["key"], cond["op"], cond["value"]
        if op == "exists":
            if (key in tags) != value:
                return False
            continue
        if key not in tags:
            return False
        have = tags[key]
        if op == "in":
            if not any(_json_equal(have, v) for v in value):
                return False
        elif not _is_number(have) or not _COMPARE[op](have, value):
            return False
    return True


def _json_equal(a: TagValue, b: TagValue) -> bool:
    # As jsonb compares: true is not 1, 1 is 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b
