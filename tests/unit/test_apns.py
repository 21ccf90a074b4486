"""APNs rendering: what each kind puts in the request (pure; the wire is tested against
the emulator in tests/providers/test_kinds.py)."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from fanout.notification import Kind, Notification, render
from fanout.providers.apns import apns_headers, apns_kind, apns_payload

NOW = 1_700_000_000


def rendered(**fields: Any) -> Any:
    return render(Notification.model_validate(fields), None, collapse_key="42")


@pytest.mark.parametrize("kind", get_args(Kind))
def test_every_kind_has_a_push_type_and_a_topic_suffix(kind: Kind) -> None:
    push_type, suffix = apns_kind(kind)
    # Apple routes a Live Activity by its topic: the bundle id + ".push-type.liveactivity".
    wanted = ".push-type.liveactivity" if kind == "liveactivity" else ""
    assert push_type == kind and suffix == wanted


def live(priority: str = "normal", title: str | None = None, **block: Any) -> Any:
    return rendered(
        kind="liveactivity", priority=priority, title=title, live_activity=block, ttl=60
    )


def test_a_live_activity_update_is_priority_5_unless_10_is_asked() -> None:
    update = {"event": "update", "content_state": {"score": "1-0"}, "timestamp": 7}
    assert apns_headers(live(**update), "com.x", now=NOW) == {
        "apns-topic": "com.x.push-type.liveactivity",
        "apns-push-type": "liveactivity",
        "apns-priority": "5",
        "apns-expiration": str(NOW + 60),
        "apns-collapse-id": "42",
    }
    asked = apns_headers(live("high", **update), "com.x", now=NOW)
    assert asked["apns-priority"] == "10"


def test_a_live_activity_start_carries_its_attributes_and_alert() -> None:
    note = live(
        title="Kick-off",
        event="start",
        content_state={"score": "0-0"},
        attributes_type="MatchAttributes",
        attributes={"home": "A", "away": "B"},
        stale_date=100,
        timestamp=5,
    )
    assert apns_payload(note) == {
        "aps": {
            "timestamp": 5,
            "event": "start",
            "content-state": {"score": "0-0"},
            "stale-date": 100,
            "attributes-type": "MatchAttributes",
            "attributes": {"home": "A", "away": "B"},
            "alert": {"title": "Kick-off", "body": ""},
        }
    }


def test_a_live_activity_end_may_carry_no_content_state() -> None:
    note = live(event="end", dismissal_date=200, timestamp=9)
    assert apns_payload(note) == {"aps": {"timestamp": 9, "event": "end", "dismissal-date": 200}}


def test_an_alert_carries_every_option_apple_knows() -> None:
    note = rendered(
        title="T", subtitle="S", body="B", badge=2, sound="ping.caf", thread_id="th",
        action_category="NEW", interruption_level="passive", relevance_score=0.25,
        url="https://x.example/1", image="https://x.example/1.jpg", data={"id": "1"},
    )  # fmt: skip
    assert apns_payload(note) == {
        "aps": {
            "alert": {"title": "T", "subtitle": "S", "body": "B"},
            "badge": 2,
            "sound": "ping.caf",
            "thread-id": "th",
            "category": "NEW",
            "interruption-level": "passive",
            "relevance-score": 0.25,
            "mutable-content": 1,  # the image
        },
        "id": "1",
        "url": "https://x.example/1",
        "image": "https://x.example/1.jpg",
    }


def test_mutable_content_is_on_when_asked_without_an_image() -> None:
    assert apns_payload(rendered(title="T", mutable_content=True))["aps"]["mutable-content"] == 1
    assert "mutable-content" not in apns_payload(rendered(title="T"))["aps"]


def test_a_critical_alert_plays_its_sound_as_a_critical_sound() -> None:
    aps = apns_payload(rendered(title="T", sound="siren.caf", interruption_level="critical"))["aps"]
    assert aps["sound"] == {"critical": 1, "name": "siren.caf", "volume": 1.0}


@pytest.mark.parametrize(("priority", "apns_priority"), [("high", "10"), ("normal", "5")])
def test_an_alerts_headers(priority: str, apns_priority: str) -> None:
    assert apns_headers(rendered(title="T", priority=priority, ttl=60), "com.x", now=NOW) == {
        "apns-topic": "com.x",
        "apns-push-type": "alert",
        "apns-priority": apns_priority,
        "apns-expiration": str(NOW + 60),
        "apns-collapse-id": "42",
    }


@pytest.mark.parametrize("priority", ["high", "normal"])
def test_a_background_push_is_content_available_at_priority_5(priority: str) -> None:
    note = rendered(kind="background", data={"sync": "1"}, priority=priority, ttl=0)
    assert apns_payload(note) == {"aps": {"content-available": 1}, "sync": "1"}
    headers = apns_headers(note, "com.x", now=NOW)
    assert (headers["apns-push-type"], headers["apns-priority"]) == ("background", "5")
    assert headers["apns-expiration"] == "0"  # ttl 0: now or never


def test_the_apns_block_is_merged_into_payload_and_headers() -> None:
    note = rendered(
        title="T", badge=1, data={"keep": "1", "drop": "1"},
        apns={"headers": {"apns-priority": "5", "apns-collapse-id": "mine"},
              "payload": {"aps": {"badge": None, "sound": "a.caf"}, "drop": None, "extra": [1]}},
    )  # fmt: skip
    assert apns_payload(note) == {
        "aps": {"alert": {"title": "T", "body": ""}, "sound": "a.caf"},
        "keep": "1",
        "extra": [1],
    }
    headers = apns_headers(note, "com.x", now=NOW)
    assert (headers["apns-priority"], headers["apns-collapse-id"]) == ("5", "mine")


def test_a_collapse_id_is_cut_to_64_bytes_on_a_character_boundary() -> None:
    headers = apns_headers(rendered(title="T", collapse_key="é" * 40), "com.x", now=NOW)
    assert headers["apns-collapse-id"] == "é" * 32
