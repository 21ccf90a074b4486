"""The request fingerprint an idempotency key is bound to."""

from __future__ import annotations

from fanout.notification import Notification
from fanout.stages.publish import request_fingerprint


def fingerprint(topic: str | None = "t", user: str | None = None, **note: object) -> bytes:
    payload = Notification.model_validate({"title": "x", **note}).model_dump(
        mode="json", exclude_defaults=True
    )
    return request_fingerprint(payload, topic=topic, user=user)


def test_the_same_request_has_the_same_fingerprint() -> None:
    assert fingerprint(data={"a": "1", "b": "2"}) == fingerprint(data={"b": "2", "a": "1"})
    assert fingerprint() == fingerprint(priority="high")  # the default, sent or not


def test_any_change_of_recipient_or_notification_changes_it() -> None:
    base = fingerprint()
    assert base != fingerprint(topic="u")
    assert base != fingerprint(topic=None, user="t")  # a user is not a topic of that name
    assert base != fingerprint(body="y")
    assert base != fingerprint(data={"a": "1"})
    assert len(base) == 32
