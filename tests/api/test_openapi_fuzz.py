"""Schemathesis against the served OpenAPI document: no 5xx, no response off its schema.

Bounded: a fixed number of generated requests per operation, so the run takes seconds.
Each operation's Hypothesis strategy is driven directly (schemathesis's pytest loader
does not run under pytest 9).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.api.conftest import ApiServer

EXAMPLES_PER_OPERATION = 40
# Publish options are checked against the clock and against each other (expires_at in the
# future and after send_at), which an OpenAPI schema cannot say: a schema-valid publish may
# rightly be a 422 naming the field (tests/api/test_schedule_api.py holds those). So may a
# Live Activity update (Apple's rules per event: tests/api/test_kinds_api.py), and a batch
# of 1:1 sends, each item's notification checked as the 1:1 route's is, and a webhook's URL
# (tests/unit/test_addresses.py).
CHECKED_BEYOND_THE_SCHEMA = {
    ("POST", "/v1/events"),
    ("POST", "/v1/users/{user_id}/notifications"),
    ("POST", "/v1/notifications/batch"),
    ("POST", "/v1/live-activities/{activity_id}/updates"),
    # A webhook's URL must be https:// on a public address, which is not a schema's to say.
    ("POST", "/v1/webhooks"),
    # An open token of the right shape is still refused unless its MAC is the server's.
    ("POST", "/v1/opens"),
}


# The bulk import's body is NDJSON text (POST /v1/imports/{kind}): sent as the UTF-8 of
# whatever string is generated.
@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    return str(value).encode("utf-8", "surrogatepass")


def test_api_meets_its_own_schema(api: ApiServer) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    for operation in operations:
        beyond = (operation.method.upper(), operation.path) in CHECKED_BEYOND_THE_SCHEMA
        _fuzz(api, operation, [positive_data_acceptance] if beyond else [])


def _fuzz(api: ApiServer, operation: Any, excluded: list[Any]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def call(case):  # type: ignore[no-untyped-def]
        case.call_and_validate(headers=api.headers("fuzz"), excluded_checks=excluded)

    call()
