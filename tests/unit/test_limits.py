"""Each platform's final payload against its limit, as publishing checks it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fanout.notification import Notification, render
from fanout.open_tokens import JSON_OVERHEAD
from fanout.providers.limits import _measures, _rendered_oversized, oversized_payloads, size_bound


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


# The cheap bound publishing checks first (size_bound): never below what a renderer makes.
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
    max_size=60,
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False,
    allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
_locale_text = st.fixed_dictionaries(
    {}, optional={"title": _text.filter(bool), "subtitle": _text, "body": _text}
)
_action = st.fixed_dictionaries(
    {"id": st.from_regex(r"\A[a-z0-9_]{1,12}\Z"), "title": _text.filter(bool)},
    optional={"icon": st.just("https://e.x/i.png"), "url": st.just("https://e.x/")},
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "title": _text.filter(bool),
        "subtitle": _text,
        "body": _text,
        "data": st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9]{0,10}\Z"), _text, max_size=4),
        "image": st.just("https://img.example/p.png"),
        "url": st.sampled_from(["https://example.com/a", 'app://x/"q"\\']),
        "badge": st.integers(0, 1_000_000),
        "sound": _text.filter(bool),
        "ttl": st.integers(0, 28 * 24 * 3600),
        "priority": st.sampled_from(["high", "normal"]),
        "collapse_key": _text.filter(bool).map(lambda s: s[:64]),
        "thread_id": _text.filter(bool),
        "interruption_level": st.sampled_from(["passive", "active", "time-sensitive"]),
        "relevance_score": st.floats(0, 1),
        "action_category": _text.filter(bool),
        "actions": st.lists(_action, max_size=2),
        "mutable_content": st.booleans(),
        "localized": st.dictionaries(st.sampled_from(["de", "fr", "pt-BR"]), _locale_text),
        "apns": st.fixed_dictionaries({"payload": st.dictionaries(_text, _json, max_size=3)}),
        "webpush": st.fixed_dictionaries({"payload": st.dictionaries(_text, _json, max_size=3)}),
        "fcm": st.fixed_dictionaries(
            {}, optional={"fcm_options": st.dictionaries(_text, _json, max_size=2)}
        ),
    },
)


def _notification(fields: dict[str, Any], kind: str) -> Notification:
    if kind == "alert":
        fields.setdefault("title", "t")
    elif kind == "background":
        fields = {k: v for k, v in fields.items() if k in ("data", "ttl", "priority")}
        fields["priority"] = "normal"
    else:
        fields = {k: v for k, v in fields.items() if k in ("title", "body", "relevance_score")}
        fields["live_activity"] = {"event": "update", "content_state": {"score": "1-0"}}
    try:
        return Notification.model_validate({**fields, "kind": kind})
    except ValidationError:
        reject()


@settings(max_examples=400, deadline=None)
@given(fields=_fields, kind=st.sampled_from(["alert", "background", "liveactivity"]))
def test_the_cheap_bound_is_never_below_any_platforms_rendered_size(
    fields: dict[str, Any], kind: str
) -> None:
    notification = _notification(fields, kind)
    bound = size_bound(notification)
    for locale in [None, *notification.localized]:
        rendered = render(notification, locale, collapse_key="9" * 19)
        for platform, _, size, _ in _measures(rendered):
            assert size <= bound, (platform, locale, size, bound)
    # and so the fast path answers as rendering does
    assert oversized_payloads(notification) == _rendered_oversized(notification)


def test_a_notification_just_over_a_limit_is_still_found() -> None:
    # Past the bound's margin, each platform is rendered and measured: 1 byte over is over.
    base = len(b'{"aps":{"alert":{"title":"t","body":""}},"p":""}') + JSON_OVERHEAD
    assert oversized(title="t", apns={"payload": {"p": "x" * (4096 - base)}}) == {}
    assert list(oversized(title="t", apns={"payload": {"p": "x" * (4097 - base)}})) == ["apns"]
