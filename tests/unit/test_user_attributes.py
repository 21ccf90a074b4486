"""user_attributes.py: a users attribute is one entry, and the users import follows it."""

from __future__ import annotations

import json

import pytest

from fanout.store.subscriptions import staged_users_statements
from fanout.user_attributes import USER_ATTRIBUTES, UserAttribute, parse_tags


def test_without_attributes_a_known_user_is_left_alone() -> None:
    insert, update = staged_users_statements(())
    assert "ON CONFLICT (app_id, external_id) DO NOTHING" in insert
    assert "UPDATE" not in update


def test_tags_are_the_users_attribute_staged_as_text_and_cast() -> None:
    assert [a.name for a in USER_ATTRIBUTES] == ["tags"]
    insert, update = staged_users_statements(USER_ATTRIBUTES)
    for statement in (insert, update):
        assert "SELECT DISTINCT ON (user_id) user_id, tags::jsonb AS tags" in statement
    assert "UPDATE users AS u SET tags = coalesce(s.tags, u.tags)" in update
    assert "WHERE u.app_id = $1 AND u.external_id = s.user_id AND (u.tags) IS DISTINCT" in update
    # A new user without tags gets the column's default, a known one keeps its own.
    assert "SELECT $1, s.user_id, coalesce(s.tags, '{}'::jsonb) FROM staged AS s" in insert


def test_an_attribute_without_a_cast_or_default_is_set_as_staged() -> None:
    plan = UserAttribute("plan", "text", str)
    insert, update = staged_users_statements((plan,))
    assert "SELECT DISTINCT ON (user_id) user_id, plan" in insert
    assert "SELECT $1, s.user_id, s.plan FROM staged AS s" in insert
    assert "SET plan = coalesce(s.plan, u.plan)" in update


def test_tags_are_checked_as_the_api_checks_them() -> None:
    assert json.loads(parse_tags({"plan": "premium", "age": 30})) == {"age": 30, "plan": "premium"}
    assert json.loads(parse_tags('{"beta": true}')) == {"beta": True}
    for bad in ("not json", "[1]", {"nested": {"a": 1}}):
        with pytest.raises(ValueError):
            parse_tags(bad)
