"""``store.apps`` beyond what ``test_store`` holds every store module to: each statement
written just above the function that runs it, and the app key's rule the table's."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

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
