"""The store's promise: every statement runs behind one named function, whose parameters
are keyword-only and reach the statement whole (as many as it has ``$N``), and nothing
outside the store runs SQL of its own."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import fanout
from fanout import store
from fanout.store import queries

STATEMENTS = {
    name: sql
    for name, sql in vars(queries).items()
    if name.isupper() and not name.startswith("_") and isinstance(sql, str)
}
# Functions that run a statement handed to them rather than one of their own.
GENERIC = {"find_or_create"}
FUNCTIONS = {
    name: value
    for name, value in vars(store).items()
    if inspect.iscoroutinefunction(value)
    and name not in GENERIC
    and value.__module__ != "fanout.store.connection"
}

# Arguments that must have a shape; every other parameter gets a plain number.
SHAPED: dict[str, Any] = {
    "bounds": [(0, 10), (10, 20)],
    "accepted": [SimpleNamespace(key="1/0/0", devices=3, first_user=1, last_user=2)],
    "platforms": ["apns"],
    "device_ids": [1, 2],
    "users": ["u1"],
    "page_filter": store.PageFilter(),
    "waves": [store.PlannedWave(datetime(2026, 3, 29, 7, tzinfo=UTC), ("Europe/Berlin",), True)],
    "now": datetime(2026, 3, 29, 7, tzinfo=UTC),
    "at": datetime(2026, 3, 29, 7, tzinfo=UTC),
    "held_back": {"deferred": 1},
    "preferences": [store.Preferences(user="u1", opted_out=True)],
    "time_zones": ["Europe/Berlin"],
    "counted_users": [1, 2],
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


async def _run_one(function: Callable[..., Any]) -> tuple[str, tuple[Any, ...]]:
    conn = RecordingConnection()
    parameters = list(inspect.signature(function).parameters.values())[1:]
    kwargs = {p.name: SHAPED.get(p.name, 7) for p in parameters}
    with pytest.raises(_Ran):
        await function(conn, **kwargs)
    assert len(conn.calls) == 1, f"{function.__name__} ran {len(conn.calls)} statements"
    return conn.calls[0]


def test_every_store_function_takes_the_connection_then_keywords_only() -> None:
    for name, function in FUNCTIONS.items():
        conn, *rest = inspect.signature(function).parameters.values()
        assert conn.name == "conn", name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), name
        assert function.__doc__, f"{name} says what it does"


async def test_every_statement_runs_behind_one_function_with_all_its_parameters() -> None:
    run_by: dict[str, list[str]] = {}
    for name, function in FUNCTIONS.items():
        query, args = await _run_one(function)
        statement = next(s for s, sql in STATEMENTS.items() if sql is query)
        run_by.setdefault(statement, []).append(name)
        placeholders = {int(n) for n in re.findall(r"\$(\d+)", query)}
        assert placeholders == set(range(1, len(args) + 1)), (
            f"{name} passes {len(args)} arguments to {statement}, which takes "
            f"${max(placeholders, default=0)}"
        )
    assert sorted(run_by) == sorted(STATEMENTS), "a statement no function runs"
    assert all(len(names) == 1 for names in run_by.values()), run_by


async def test_checkpoint_passes_the_accepted_batches_as_columns() -> None:
    conn = RecordingConnection()
    with pytest.raises(_Ran):
        await store.checkpoint_shard(
            conn,
            event_id=1,
            shard=2,
            cursor=3,
            recipients=4,
            devices=5,
            batches=6,
            held_back={"muted": 2},
            accepted=SHAPED["accepted"],
            category="news",
            counted_users=[1, 2],
            lease_seconds=30,
            overdue_after=60,
        )
    assert conn.calls == [
        (
            queries.CHECKPOINT_SHARD,
            (1, 2, 3, 4, 5, 6, 30, 60, 60, ["1/0/0"], [3], [1], [2], {"muted": 2}, "news", [1, 2]),
        )
    ]


def test_nothing_outside_the_store_holds_a_statement() -> None:
    src = Path(fanout.__file__).parent
    outside = [p for p in src.rglob("*.py") if "store" not in p.relative_to(src).parts]
    offenders = [str(p) for p in outside if "store import queries" in p.read_text()]
    assert not offenders
