"""The attributes a user row carries beyond its external id, as the bulk import of users
sets them: one entry per attribute.

An entry names the ``users`` column, its SQL type (the staging table's column and the
cast of the value COPY brings), and the function that checks a file's value and turns it
into what COPY sends (raising ValueError with the reason otherwise). The users import
(store/subscriptions.py's UPSERT_STAGED_USERS, bulk/rows.py) is built from this table,
so an attribute that lands on ``users`` (e.g. ``tags jsonb``) is one entry here, e.g.::

    UserAttribute("tags", "jsonb", parse_tags)

An attribute absent from a row leaves the stored value as it is; present, it replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class UserAttribute:
    name: str  # the users column, and the file's column / NDJSON key
    sql_type: str
    parse: Callable[[Any], Any]  # the file's value -> the value COPY sends; ValueError: bad


USER_ATTRIBUTES: tuple[UserAttribute, ...] = ()
