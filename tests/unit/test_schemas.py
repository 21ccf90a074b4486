"""Request bodies: the shortcuts the hot routes take give what the models would."""

from __future__ import annotations

import itertools

import pytest

from fanout.api import schemas

CHOICES: dict[str, list[object]] = {
    "send_at": [None, "2999-01-01T00:00:00Z"],
    "deliver_at_local": [None, "09:00"],
    "quiet_hours": [None, "defer", "drop", "ignore"],
    "expires_at": [None, "2999-01-02T00:00:00+02:00"],
    "throttle_per_minute": [None, 600],
    "filter": [None, {"tags": {"plan": "premium"}}],
}


@pytest.mark.parametrize(
    "chosen",
    [dict(zip(CHOICES, values, strict=True)) for values in itertools.product(*CHOICES.values())],
)
def test_plain_options_are_the_options_or_none(chosen: dict[str, object]) -> None:
    body = {"user_id": "u1", "notification": {"title": "t"}}
    body.update({name: value for name, value in chosen.items() if value is not None})
    item = schemas.BatchNotificationIn.model_validate(body)
    plain = item.plain_options()
    only_quiet_hours = all(v is None for k, v in chosen.items() if k != "quiet_hours")
    assert (plain is not None) == only_quiet_hours
    if plain is not None:
        assert plain == item.options()
