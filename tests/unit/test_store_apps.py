"""``store.apps`` keeps the store's promise in its new form: each statement is a constant
of the module beside the one function that runs it; that function takes the connection
and then keywords only, runs that statement alone and passes it every ``$N``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from fanout.store import apps

STATEMENTS = {
    name: sql
    for name, sql in vars(apps).items()
    if name.isupper()
    and isinstance(sql, str)
    and re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE)", sql)
}
FUNCTIONS = {
    name: value
    for name, value in vars(apps).items()
    if inspect.iscoroutinefunction(value) and value.__module__ == apps.__name__
}


class RecordingConnection:
    """Stands in for asyncpg: records each statement and its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def _run(self, query: str, *args: Any) -> Any:
        self.calls.append((query, args))
        raise _Ran

    execute = fetch = fetchrow = fetchval = _run


class _Ran(Exception):
    pass


def test_every_function_takes_the_connection_then_keywords_only() -> None:
    assert FUNCTIONS
    for name, function in FUNCTIONS.items():
        conn, *rest = inspect.signature(function).parameters.values()
        assert conn.name == "conn", name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), name
        assert function.__doc__, f"{name} says what it does"


async def test_every_statement_runs_behind_one_function_with_all_its_parameters() -> None:
    run_by: dict[str, list[str]] = {}
    for name, function in FUNCTIONS.items():
        conn = RecordingConnection()
        parameters = list(inspect.signature(function).parameters.values())[1:]
        with pytest.raises(_Ran):
            await function(conn, **{p.name: 7 for p in parameters})
        [(query, args)] = conn.calls
        statement = next(s for s, sql in STATEMENTS.items() if sql is query)
        assert f"``{statement}``" in (function.__doc__ or ""), f"{name} names {statement}"
        placeholders = {int(n) for n in re.findall(r"\$(\d+)", query)}
        assert placeholders == set(range(1, len(args) + 1)), name
        run_by.setdefault(statement, []).append(name)
    assert sorted(run_by) == sorted(STATEMENTS), "a statement no function runs"
    assert all(len(names) == 1 for names in run_by.values()), run_by


def test_each_statement_is_written_just_above_its_function() -> None:
    source = inspect.getsource(apps)
    for name, function in FUNCTIONS.items():
        statement = next(s for s in STATEMENTS if f"``{s}``" in (function.__doc__ or ""))
        between = source[source.index(f"\n{statement} = ") : source.index(f"def {name}(")]
        assert "\nasync def " not in between, f"{statement} is not beside {name}"


def test_the_app_key_rule_is_the_tables() -> None:
    migration = Path(apps.__file__).parent / "migrations" / "0011_apps.sql"
    assert f"key ~ '{apps.APP_KEY_PATTERN}'" in migration.read_text()
    assert re.match(apps.APP_KEY_PATTERN, apps.DEFAULT_APP)
    for good in ("books-ios", "b2", "a" * 63):
        assert re.match(apps.APP_KEY_PATTERN, good)
    for bad in ("b", "-books", "Books", "books_ios", "a" * 64, "books ios"):
        assert not re.match(apps.APP_KEY_PATTERN, bad)
