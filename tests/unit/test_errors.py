"""fanout's own errors share one root: a caller catches ``FanoutError`` and has them all."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import fanout
from fanout.config import ConfigError, Unreachable
from fanout.errors import FanoutError

SRC = Path(fanout.__file__).parent
_EXCEPTION_BASES = {"Exception", "ValueError", "RuntimeError", "FanoutError"}


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) for every exception class fanout defines outside ``local/`` (the
    demo's and tests' tools)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[0] == "local":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id in _EXCEPTION_BASES for base in node.bases
            ):
                module = ".".join(("fanout", *parts)).removesuffix(".__init__")
                found.append((module, node.name))
    return found


@pytest.mark.parametrize(("module", "name"), _error_classes())
def test_every_error_fanout_defines_derives_from_fanout_error(module: str, name: str) -> None:
    assert issubclass(getattr(importlib.import_module(module), name), FanoutError)


def test_config_and_reachability_errors_are_caught_as_fanout_errors() -> None:
    unreachable = Unreachable("the database", "db:5432", "FANOUT_DATABASE_URL", "refused")
    for error in (ConfigError("FANOUT_X: must be a number"), unreachable):
        with pytest.raises(FanoutError):
            raise error
