"""How many connections `fanout serve` holds, from its limit of open files
(api/connection_limits.py's connection_budget)."""

from __future__ import annotations

import pytest

from fanout.api.connection_limits import ConnectionBudget, connection_budget
from fanout.config import ConfigError, Settings

# What fanout keeps for itself with the default settings: the database pool (10), SQS's
# connections (64) and 64 more (logs, the event loop, DNS).
KEPT = 10 + 64 + 64


def test_by_default_every_descriptor_not_kept_or_being_accepted_holds_a_connection() -> None:
    budget = connection_budget(Settings(), 1024)
    assert budget == ConnectionBudget(max_connections=1024 - KEPT - 221, backlog=221)


def test_a_large_limit_keeps_uvicorns_backlog() -> None:
    budget = connection_budget(Settings(), 65536)
    assert budget == ConnectionBudget(max_connections=65536 - KEPT - 2048, backlog=2048)


def test_a_larger_database_pool_is_kept_out_of_the_connections() -> None:
    assert (
        connection_budget(Settings(database_pool_size=50), 1024).max_connections
        == 1024 - (KEPT + 40) - (1024 - KEPT - 40) // 4
    )


def test_no_limit_of_open_files_leaves_the_setting_as_it_is() -> None:
    assert connection_budget(Settings(), None) == ConnectionBudget(0, 2048)
    assert connection_budget(Settings(api_max_connections=5000), None).max_connections == 5000


def test_a_setting_the_process_can_hold_is_taken() -> None:
    assert connection_budget(Settings(api_max_connections=500), 1024).max_connections == 500


def test_a_setting_past_the_descriptors_is_one_line_naming_it_and_the_most() -> None:
    with pytest.raises(ConfigError) as raised:
        connection_budget(Settings(api_max_connections=1000), 1024)
    message = str(raised.value)
    assert message.startswith("FANOUT_API_MAX_CONNECTIONS is more than fanout serve can hold:")
    assert "its limit of open files is 1024 (ulimit -n)" in message
    assert message.endswith(f"at most {1024 - KEPT - 221}, or raise ulimit -n")
    assert "\n" not in message


def test_too_few_descriptors_for_any_connection_say_to_raise_the_limit() -> None:
    with pytest.raises(ConfigError, match=r"cannot hold a connection: .*raise ulimit -n$"):
        connection_budget(Settings(), KEPT + 1)
