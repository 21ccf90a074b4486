"""Each platform's final payload against its limit, as publishing checks it."""

from __future__ import annotations

from typing import Any

import pytest

from fanout.notification import Notification
from fanout.open_tokens import JSON_OVERHEAD
from fanout.providers.limits import oversized_payloads


def oversized(**fields: Any) -> dict[str, str]:
    return oversized_payloads(Notification.model_validate(fields))


def test_a_notification_every_platform_takes_is_not_named() -> None:
    assert oversized(title="t", body="b" * 1000, data={"k": "v" * 2000}) == {}


def test_a_notification_too_large_everywhere_names_every_platform_and_its_limit() -> None:
    found = oversized(title="t", data={f"k{i}": "v" * 100 for i in range(40)})
    assert set(found) == {"apns", "fcm", "webpush"}
    assert all("the limit is 4096 bytes" in message for message in found.values())
    assert "the Web Push payload with its open token, encrypted," in found["webpush"]


def test_the_largest_locale_is_named() -> None:
    found = oversized(
        title="t",
        data={"k": "v" * 2500},
        localized={"de": {"title": "T" * 1000, "body": "x" * 1000}, "fr": {"body": "y"}},
    )
    assert set(found) == {"apns", "fcm", "webpush"}
    assert all("(locale de)" in message for message in found.values())


@pytest.mark.parametrize(
    ("block", "platform"),
    [
        ({"apns": {"payload": {"blob": "x" * 4100}}}, "apns"),
        ({"fcm": {"android": {"data": {"blob": "x" * 4100}}}}, None),  # not FCM's measure
        ({"webpush": {"payload": {"blob": "x" * 4000}}}, "webpush"),
    ],
)
def test_an_override_counts_toward_its_own_platforms_limit_only(
    block: dict[str, Any], platform: str | None
) -> None:
    assert list(oversized(title="t", **block)) == ([platform] if platform else [])


def test_web_push_is_measured_encrypted_with_its_open_token() -> None:
    # 3,993 bytes of JSON encrypt to 4,096: that fits with the open token's 57 bytes
    # (`,"fo_open":"<44>"`) added; one more does not.
    base = len(b'{"kind":"alert","title":"t","body":"","data":{},"ttl":86400,'
               b'"priority":"high","collapse_key":"9999999999999999999","p":""}')  # fmt: skip
    base += JSON_OVERHEAD
    assert oversized(title="t", webpush={"payload": {"p": "x" * (3993 - base)}}) == {}
    assert list(oversized(title="t", webpush={"payload": {"p": "x" * (3994 - base)}})) == [
        "webpush"
    ]


def test_room_for_the_open_token_is_kept_for_apns() -> None:
    base = len(b'{"aps":{"alert":{"title":"t","body":""}},"p":""}') + JSON_OVERHEAD
    assert oversized(title="t", apns={"payload": {"p": "x" * (4096 - base)}}) == {}
    assert list(oversized(title="t", apns={"payload": {"p": "x" * (4097 - base)}})) == ["apns"]
