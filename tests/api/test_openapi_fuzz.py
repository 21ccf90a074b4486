"""Schemathesis against the served OpenAPI document: no 5xx, no response off its schema.

Bounded: a fixed number of generated requests per operation, so the run takes seconds.
Each operation's Hypothesis strategy is driven directly (schemathesis's pytest loader
does not run under pytest 9).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.api.conftest import ApiServer

EXAMPLES_PER_OPERATION = 40


def test_api_meets_its_own_schema(api: ApiServer) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case):  # type: ignore[no-untyped-def]
            case.call_and_validate(headers=api.headers("fuzz"))

        call()
