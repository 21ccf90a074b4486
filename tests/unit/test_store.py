"""The store's promise: every statement is written in the module of its table beside the one
function that runs it, whose parameters are keyword-only and reach the statement whole (as
many as it has ``$N``), and nothing outside the store runs SQL of its own."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

import fanout
import fanout.store
from fanout.store import (
    audience,
    batches,
    events,
    lifecycle,
    live_activities,
    recipients,
    shards,
    waves,
)

# Modules that hold no statement of their own: pools, the migration runner, shared SQL,
# the bulk import's staging tables (DDL and COPY).
NOT_TABLES = {"connection", "migrate", "fragments", "staging"}
MODULES: dict[str, ModuleType] = {
    info.name: importlib.import_module(f"fanout.store.{info.name}")
    for info in pkgutil.iter_modules(fanout.store.__path__)
    if info.name not in NOT_TABLES and not info.ispkg
}


def _defined_here(module: ModuleType) -> set[str]:
    """The upper-case names a module assigns itself (not those it imports)."""
    tree = ast.parse(Path(module.__file__ or "").read_text())
    return {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id.isupper()
    }


# (module, name) -> the statement, for every statement a store module writes.
STATEMENTS = {
    (module_name, name): sql
    for module_name, module in MODULES.items()
    for name in _defined_here(module)
    if not name.startswith("_")  # a private constant is a fragment statements share
    and isinstance(sql := getattr(module, name), str)
    and re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", sql, re.IGNORECASE)
}
# Functions that run a statement handed to them rather than one of their own.
# (The source functions run statements built around an app's own query: fanout.sources.)
GENERIC = {"find_or_create", "explain_source", "source_columns", "count_source", "read_members"}
# Statements a function runs after the one it is checked by here (prepare_source_role reads
# the sandbox's state, then, only if it must create it, the role's).
RUN_AFTER_ANOTHER = {("sources", "SOURCE_ROLE_STATE")}
FUNCTIONS = {
    (module_name, name): value
    for module_name, module in MODULES.items()
    for name, value in vars(module).items()
    if inspect.iscoroutinefunction(value)
    and name not in GENERIC
    and not name.startswith("_")
    and value.__module__ == module.__name__
}

# Arguments that must have a shape; every other parameter gets a plain number.
SHAPED: dict[str, Any] = {
    "bounds": [(0, 10), (10, 20)],
    "accepted": [SimpleNamespace(key="1/0/0", devices=3, first_user=1, last_user=2)],
    "platforms": ["apns"],
    "device_ids": [1, 2],
    "users": ["u1"],
    "page_filter": recipients.PageFilter(),
    "waves": [waves.PlannedWave(datetime(2026, 3, 29, 7, tzinfo=UTC), ("Europe/Berlin",), True)],
    "now": datetime(2026, 3, 29, 7, tzinfo=UTC),
    "at": datetime(2026, 3, 29, 7, tzinfo=UTC),
    "held_back": {"deferred": 1},
    "preferences": [audience.Preferences(user="u1", opted_out=True)],
    "time_zones": ["Europe/Berlin"],
    "counted_users": [1, 2],
    "owner": uuid.UUID(int=7),
    "audience": live_activities.Audience(1, "activity", datetime(2026, 3, 29, 7, tzinfo=UTC)),
    "token_ids": [1, 2],
    "ends_at": datetime(2026, 3, 29, 7, tzinfo=UTC),
    "kinds": ["event.finished"],
    "answer": "connection refused",
    "not_before": [datetime(2026, 3, 29, 7, tzinfo=UTC)],
    "resume_at": datetime(2026, 3, 29, 7, tzinfo=UTC),
    "new_events": [lifecycle.NewEvent(app_id=1, notification={"title": "x"}, user="u1")],
    "event_ids": [1, 2],
    "events": [(1, "news")],
    "reads": [recipients.UserRead(1, 2, 0, None, recipients.PageFilter())],
    "each": [(1, 2, 3)],
    "event_users": [(1, 2)],
    "scopes": [events.IdempotencyScope(1, None, "k")],
    # store/batches.py: a bundle's (event, key, attempt, devices); shards.py passes its count on
    "batches": [(1, "k", 1, 2)],
    "outcomes": [batches.BatchOutcome(1, "k", 1, 0, 0, 0, 0, None, {})],
}
OWNER = uuid.UUID(int=7)


class RecordingConnection:
    """Stands in for asyncpg: records each statement and its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.pipelined = False  # the statement ran through executemany/fetchmany

    async def _run(self, query: str, *args: Any) -> Any:
        self.calls.append((query, args))
        raise _Ran

    async def _run_many(self, query: str, each: list[tuple[Any, ...]]) -> Any:
        """``executemany``/``fetchmany``: recorded with the arguments of the first row."""
        self.calls.append((query, tuple(each[0])))
        self.pipelined = True
        raise _Ran

    execute = fetch = fetchrow = fetchval = _run
    executemany = fetchmany = _run_many


class _Ran(Exception):
    pass


async def _run_one(function: Callable[..., Any], **given: Any) -> tuple[str, tuple[Any, ...], bool]:
    """The statement ``function`` runs, its arguments, and whether it ran pipelined."""
    conn = RecordingConnection()
    parameters = list(inspect.signature(function).parameters.values())[1:]
    kwargs = {p.name: given.get(p.name, SHAPED.get(p.name, 7)) for p in parameters}
    with pytest.raises(_Ran):
        await function(conn, **kwargs)
    assert len(conn.calls) == 1, f"{function.__name__} ran {len(conn.calls)} statements"
    return (*conn.calls[0], conn.pipelined)


async def _runs(function: Callable[..., Any]) -> list[tuple[str, tuple[Any, ...], bool]]:
    """What ``function`` runs; a page read with ``tag_filtered`` runs its filtered page
    statement or its plain one: both."""
    if "tag_filtered" in inspect.signature(function).parameters:
        return [await _run_one(function, tag_filtered=flag) for flag in (False, True)]
    return [await _run_one(function)]


def test_every_store_function_takes_the_connection_then_keywords_only() -> None:
    for (_, name), function in FUNCTIONS.items():
        conn, *rest = inspect.signature(function).parameters.values()
        assert conn.name == "conn", name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), name
        assert function.__doc__, f"{name} says what it does"


async def test_every_statement_runs_behind_one_function_of_its_own_module() -> None:
    run_by: dict[tuple[str, str], list[str]] = {}
    pipelined: dict[tuple[str, str], list[str]] = {}
    for (module_name, name), function in FUNCTIONS.items():
        for query, args, many in await _runs(function):
            statement = next(s for s, sql in STATEMENTS.items() if sql is query)
            assert statement[0] == module_name, f"{name} runs {statement}, written elsewhere"
            if many:  # a pipelined form of the one-row function that owns the statement
                pipelined.setdefault(statement, []).append(name)
                continue
            run_by.setdefault(statement, []).append(name)
            placeholders = {int(n) for n in re.findall(r"\$(\d+)", query)}
            assert placeholders == set(range(1, len(args) + 1)), (
                f"{name} passes {len(args)} arguments to {statement}, which takes "
                f"${max(placeholders, default=0)}"
            )
    ran = set(run_by) | set(pipelined) | RUN_AFTER_ANOTHER
    assert ran == set(STATEMENTS), "a statement no function runs"
    assert all(len(names) == 1 for names in run_by.values()), run_by
    assert set(pipelined) <= set(run_by), "a pipelined statement no one-row function owns"


async def test_checkpoint_passes_the_accepted_batches_as_columns() -> None:
    conn = RecordingConnection()
    with pytest.raises(_Ran):
        await shards.checkpoint_shard(
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
            owner=OWNER,
            lease_seconds=30,
            overdue_after=60,
        )
    assert conn.calls == [
        (
            shards.CHECKPOINT_SHARD,
            (
                *(1, 2, 3, 4, 5, 6, 30, 60, 60, ["1/0/0"], [3], [1], [2], {"muted": 2}),
                *("news", [1, 2], OWNER, [None]),
            ),
        )
    ]


def test_nothing_outside_the_store_holds_a_statement() -> None:
    src = Path(fanout.__file__).parent
    outside = [p for p in src.rglob("*.py") if "store" not in p.relative_to(src).parts]
    statement_names = {name for _, name in STATEMENTS}
    offenders = [
        f"{p}: {name}"
        for p in outside
        for name in re.findall(r"\b[a-z_]+\.([A-Z][A-Z_]+)\b", p.read_text())
        if name in statement_names
    ]
    assert not offenders
