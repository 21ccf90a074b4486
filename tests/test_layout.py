"""How the tests are laid out: `tests/unit/test_<module>.py` is the pure logic of one module
of `src/fanout`, and the other folders group tests by what they inflict. A name stands in one
folder only, so `test_tags.py` always means the unit tests of `fanout/tags.py`."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).parent


def test_no_test_file_name_stands_in_two_folders() -> None:
    folders: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        folders[path.name].append(str(path.parent.relative_to(TESTS)))
    twice = {name: sorted(found) for name, found in folders.items() if len(found) > 1}
    assert twice == {}, f"rename the integration or fault file, keep the unit one: {twice}"
