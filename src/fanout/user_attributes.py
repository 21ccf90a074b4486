"""The attributes a user row carries beyond its external id, as the bulk import of users
sets them: one entry per attribute.

An entry names the ``users`` column, its SQL type (the staging table's column and the
cast of the value COPY brings), and the function that checks a file's value and turns it
into what COPY sends (raising ValueError with the reason otherwise). The users import
(store/subscriptions.py's UPSERT_STAGED_USERS, bulk/rows.py) is built from this table,
so an attribute that lands on ``users`` is one entry here, as ``tags`` is: staged as text
(COPY's binary form of jsonb is not what asyncpg's text codec sends), cast to ``jsonb`` by
the statement, and ``'{}'`` for a new user whose row has none.

An attribute absent from a row (or an empty CSV cell) leaves the stored value as it is;
present, it replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fanout.tags import check_tags


@dataclass(frozen=True, slots=True)
class UserAttribute:
    name: str  # the users column, and the file's column / NDJSON key
    sql_type: str
    parse: Callable[[Any], Any]  # the file's value -> the value COPY sends; ValueError: bad
    cast: str | None = None  # the users column's type, when the staged one is another
    default: str | None = None  # SQL: a new user's value when its row has none


def parse_tags(value: Any) -> str:
    """A row's tags (an NDJSON object, or a CSV cell holding one in JSON), checked as
    ``PUT /v1/users/{id}/tags`` checks them, as the JSON text COPY sends."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("not a JSON object of tags") from None
    return json.dumps(check_tags(value), separators=(",", ":"), sort_keys=True)


USER_ATTRIBUTES: tuple[UserAttribute, ...] = (
    UserAttribute("tags", "text", parse_tags, cast="jsonb", default="'{}'::jsonb"),
)
