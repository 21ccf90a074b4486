"""An event's life has one owner: the states are an enum whose values are those the schema
allows and the API shows, every state is either open, scheduled or terminal, and no
statement outside ``store/lifecycle.py`` writes ``events.status``."""

from __future__ import annotations

import re
from importlib import resources

from fanout.store import lifecycle
from fanout.store.lifecycle import OPEN_STATES, TERMINAL_STATES, EventState
from tests.unit.test_store import STATEMENTS


def _latest_status_check() -> set[str]:
    """The states the newest migration that constrains ``events.status`` allows."""
    migrations = resources.files("fanout.store.migrations")
    checks = [
        f.read_text()
        for f in sorted(migrations.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".sql") and "events_status_check CHECK" in f.read_text()
    ]
    clause = checks[-1].split("events_status_check CHECK", 1)[1].split(")", 1)[0]
    return set(re.findall(r"'(\w+)'", clause))


def test_the_states_are_those_the_schema_allows() -> None:
    assert {state.value for state in EventState} == _latest_status_check()


def test_a_state_compares_equal_to_its_stored_string() -> None:
    assert EventState.FANNED_OUT == "fanned_out"
    assert "delivered" in TERMINAL_STATES
    assert EventState("partially_delivered") is EventState.PARTIALLY_DELIVERED


def test_every_state_is_open_scheduled_or_terminal_and_only_one() -> None:
    open_states = set(OPEN_STATES)
    assert not open_states & TERMINAL_STATES
    assert open_states | TERMINAL_STATES | {EventState.SCHEDULED} == set(EventState)


def test_the_fan_out_runs_only_before_it_has_fanned_out() -> None:
    assert set(OPEN_STATES) > lifecycle.FANNING
    assert EventState.FANNED_OUT not in lifecycle.FANNING


def _writes_event_status(sql: str) -> bool:
    if re.search(r"\bINSERT INTO events\b", sql):
        return True
    for update in re.finditer(r"\bUPDATE events\b(.*?)(?:\bFROM\b|\bWHERE\b)", sql, re.S):
        if re.search(r"\bstatus\s*=", update.group(1)):
            return True
    return False


def test_only_the_lifecycle_writes_an_events_status() -> None:
    writers = {where for where, sql in STATEMENTS.items() if _writes_event_status(sql)}
    assert writers, "the check finds the lifecycle's own statements"
    assert {module for module, _ in writers} == {"lifecycle"}, writers
