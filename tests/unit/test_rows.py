"""bulk/rows.py: a record checked as the API checks it, mapped from other services."""

from __future__ import annotations

import pytest

from fanout.bulk.rows import RowError, row_of

APNS = "ab" * 32


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            {"user_id": "u", "platform": "apns", "token": "xyz"},
            "token: String should match pattern",
        ),
        (
            {"user_id": "u", "platform": "pigeon", "token": "x"},
            "platform: not one of apns, fcm, webpush",
        ),
        ({"user_id": "u", "token": "x"}, "platform: missing"),
        (
            {"user_id": "u", "platform": "webpush", "token": "https://p.example/1"},
            "subscription.keys: missing",
        ),
        (
            {
                "user_id": "u",
                "platform": "webpush",
                "token": "https://p.example/1",
                "web_push_p256dh": "K",
            },
            "subscription.keys.auth: missing",
        ),
        (
            {
                "user_id": "u",
                "platform": "webpush",
                "token": "http://p.example/1",
                "web_push_p256dh": "K",
                "web_push_auth": "A",
            },
            "subscription.endpoint: String should match",
        ),
        ({"user_id": "u", "platform": "fcm"}, "token: missing"),
        ({"platform": "fcm", "token": "t"}, "user_id: missing"),
        ({"user_id": "has space", "platform": "fcm", "token": "t"}, "user_id: String should match"),
        (
            {"user_id": "u", "platform": "apns", "token": APNS, "apns_environment": "dev"},
            "apns_environment:",
        ),
    ],
)
def test_a_bad_device_is_refused_naming_the_field(record: dict[str, str], reason: str) -> None:
    with pytest.raises(RowError) as refused:
        row_of("devices", 7, record, None)
    assert str(refused.value).startswith(reason)


def test_devices_of_each_platform_become_staging_tuples() -> None:
    assert row_of(
        "devices",
        2,
        {"user_id": "u", "platform": "apns", "token": APNS, "apns_environment": "sandbox"},
        None,
    ) == (2, "u", "apns", APNS, None, None, None, True)
    assert row_of(
        "devices", 3, {"user_id": "u", "platform": "fcm", "token": "t", "locale": "de"}, None
    ) == (3, "u", "fcm", "t", None, None, "de", False)
    web = {
        "user_id": "u",
        "platform": "webpush",
        "subscription": {"endpoint": "https://p.example/1", "keys": {"p256dh": "K", "auth": "A"}},
    }
    assert row_of("devices", 4, web, None) == (
        4,
        "u",
        "webpush",
        "https://p.example/1",
        "K",
        "A",
        None,
        False,
    )


def test_subscriptions_and_users_check_their_identifiers() -> None:
    assert row_of("subscriptions", 2, {"topic": "author:7", "user_id": "u"}, None) == (
        2,
        "author:7",
        "u",
    )
    with pytest.raises(RowError, match="topic: not a topic key"):
        row_of("subscriptions", 2, {"topic": "author 7", "user_id": "u"}, None)
    assert row_of("users", 5, {"user_id": "reader@example"}, None) == (5, "reader@example", None)
    with pytest.raises(RowError, match="user_id: not an external user id"):
        row_of("users", 5, {"user_id": "-leading-dash"}, None)
    with pytest.raises(RowError, match="not JSON"):
        row_of("users", 5, "not JSON: x", None)


def test_onesignals_csv_export_maps_its_device_types() -> None:
    ios = {
        "id": "p1",
        "identifier": APNS,
        "device_type": "0",
        "external_user_id": "u1",
        "language": "en",
    }
    assert row_of("devices", 2, ios, "onesignal") == (
        2,
        "u1",
        "apns",
        APNS,
        None,
        None,
        "en",
        False,
    )
    chrome = {
        "identifier": "https://fcm.googleapis.com/fcm/send/x",
        "device_type": "5",
        "external_user_id": "u1",
        "web_auth": "A",
        "web_p256": "K",
    }
    assert row_of("devices", 3, chrome, "onesignal")[2:6] == (
        "webpush",
        "https://fcm.googleapis.com/fcm/send/x",
        "K",
        "A",
    )
    assert row_of("users", 4, ios, "onesignal") == (4, "u1", None)
    with pytest.raises(RowError, match="device_type: 11 is not a push device"):
        row_of("devices", 5, {**ios, "device_type": "11"}, "onesignal")
    with pytest.raises(RowError, match="invalid_identifier"):
        row_of("devices", 6, {**ios, "invalid_identifier": "t"}, "onesignal")
    with pytest.raises(RowError, match="external_user_id: missing"):
        row_of("devices", 7, {"identifier": APNS, "device_type": "0"}, "onesignal")


def test_a_firebase_token_list_is_fcm_devices_by_uid() -> None:
    assert row_of("devices", 2, {"uid": "u1", "fcm_token": "t"}, "firebase") == (
        2,
        "u1",
        "fcm",
        "t",
        None,
        None,
        None,
        False,
    )
    assert row_of("users", 2, {"uid": "u1", "token": "t"}, "firebase") == (2, "u1", None)
