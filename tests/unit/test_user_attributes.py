"""user_attributes.py: a users attribute is one entry, and the users import follows it."""

from __future__ import annotations

import json

from fanout.store.subscriptions import upsert_staged_users_statement
from fanout.user_attributes import USER_ATTRIBUTES, UserAttribute


def test_without_attributes_a_known_user_is_left_alone() -> None:
    assert USER_ATTRIBUTES == ()
    assert "ON CONFLICT (app_id, external_id) DO NOTHING" in upsert_staged_users_statement(())


def test_an_attribute_entry_is_a_column_set_only_when_it_changes() -> None:
    tags = UserAttribute("tags", "jsonb", lambda value: json.dumps(value))
    statement = upsert_staged_users_statement((tags,))
    assert "INSERT INTO users AS u (app_id, external_id, tags)" in statement
    assert "SELECT DISTINCT ON (user_id) $1, user_id, tags FROM import_users" in statement
    assert "DO UPDATE SET tags = coalesce(EXCLUDED.tags, u.tags)" in statement
    assert "WHERE (u.tags) IS DISTINCT FROM (coalesce(EXCLUDED.tags, u.tags))" in statement
