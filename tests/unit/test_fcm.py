"""FCM rendering: a notification message for an alert, a data message for a background
push (pure; the wire is tested against the emulator in tests/providers/test_kinds.py)."""

from __future__ import annotations

from typing import Any

import orjson

from fanout.notification import Notification, render
from fanout.providers.fcm import fcm_message, fcm_payload_bytes

NOW = 1_700_000_000


def message(**fields: Any) -> dict[str, Any]:
    note = render(Notification.model_validate(fields), None, collapse_key="42")
    return fcm_message(note, now=NOW)


def test_a_plain_alert_is_what_fanout_always_sent_plus_the_push_type() -> None:
    assert message(title="T", body="B", data={"id": "1"}, url="https://x.example") == {
        "notification": {"title": "T", "body": "B"},
        "data": {"id": "1", "url": "https://x.example"},
        "android": {"collapse_key": "42", "priority": "HIGH", "ttl": "86400s"},
        "apns": {
            "headers": {
                "apns-collapse-id": "42",
                "apns-expiration": str(NOW + 86400),
                "apns-priority": "10",
                "apns-push-type": "alert",
            }
        },
        "webpush": {
            "headers": {"TTL": "86400", "Urgency": "high"},
            "fcm_options": {"link": "https://x.example"},
        },
    }


def test_a_background_push_is_a_data_message_at_apns_priority_5() -> None:
    found = message(kind="background", data={"sync": "1"}, priority="normal", ttl=30)
    assert "notification" not in found
    assert found["data"] == {"sync": "1"}
    assert found["android"] == {"collapse_key": "42", "priority": "NORMAL", "ttl": "30s"}
    assert found["apns"] == {
        "headers": {
            "apns-collapse-id": "42",
            "apns-expiration": str(NOW + 30),
            "apns-priority": "5",  # FCM: data-only to iOS is allowed at 5 only
            "apns-push-type": "background",
        },
        "payload": {"aps": {"content-available": 1}},
    }


def test_alert_options_go_where_each_platform_reads_them() -> None:
    found = message(
        title="T", subtitle="S", thread_id="th", action_category="C",
        interruption_level="active", relevance_score=1, image="https://x.example/i.png",
        actions=[{"id": "a", "title": "A", "icon": "https://x.example/a.png"}],
    )  # fmt: skip
    assert found["notification"] == {"title": "T", "body": "", "image": "https://x.example/i.png"}
    assert found["android"]["notification"] == {"tag": "th"}
    assert found["apns"]["payload"] == {
        "aps": {
            "alert": {"title": "T", "subtitle": "S", "body": ""},
            "thread-id": "th",
            "category": "C",
            "interruption-level": "active",
            "relevance-score": 1,
            "mutable-content": 1,
        }
    }
    assert found["webpush"]["notification"] == {
        "tag": "th",
        "actions": [{"action": "a", "title": "A", "icon": "https://x.example/a.png"}],
    }


def test_the_fcm_block_is_merged_into_the_message() -> None:
    found = message(
        title="T",
        fcm={
            "android": {"notification": {"channel_id": "news"}, "ttl": "60s"},
            "apns": {"payload": {"aps": {"sound": "default"}}},
            "webpush": {"headers": {"urgency": "low"}, "notification": {"silent": True}},
            "fcm_options": {"analytics_label": "l"},
        },
    )
    assert found["android"] == {
        "collapse_key": "42", "priority": "HIGH", "ttl": "60s",
        "notification": {"channel_id": "news"},
    }  # fmt: skip
    assert found["apns"]["payload"] == {"aps": {"sound": "default"}}
    assert found["webpush"] == {
        "headers": {"TTL": "86400", "Urgency": "low"},
        "notification": {"silent": True},
    }
    assert found["fcm_options"] == {"analytics_label": "l"}


def test_the_size_fcm_limits_is_the_notification_and_data_as_json() -> None:
    found = message(title="T", data={"a": "b"})
    shown = {"notification": found["notification"], "data": found["data"]}
    assert fcm_payload_bytes(found) == len(orjson.dumps(shown))
    assert fcm_payload_bytes(message(kind="background")) == len(b'{"data":{}}')
