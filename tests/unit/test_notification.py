from __future__ import annotations

from typing import Any

import pydantic
import pytest

from fanout.notification import (
    ALERT_FIELDS,
    LocalizedText,
    Notification,
    critical_asked,
    render,
)

NOTE = Notification(
    title="New book",
    body="Out today",
    localized={
        "de": LocalizedText(title="Neues Buch", body="Heute erschienen"),
        "pt-BR": LocalizedText(title="Novo livro"),
    },
)


@pytest.mark.parametrize(
    ("locale", "title", "body"),
    [
        ("de", "Neues Buch", "Heute erschienen"),
        ("de-AT", "Neues Buch", "Heute erschienen"),  # falls back to the language
        ("pt_BR", "Novo livro", "Out today"),  # missing body comes from the default
        ("pt-PT", "New book", "Out today"),  # no 'pt' variant: the default
        ("fr", "New book", "Out today"),
        (None, "New book", "Out today"),
    ],
)
def test_locale_variant_is_chosen_with_fallback(locale: str | None, title: str, body: str) -> None:
    rendered = render(NOTE, locale, collapse_key="42")
    assert (rendered.title, rendered.body) == (title, body)


def test_collapse_key_defaults_to_the_event() -> None:
    assert render(NOTE, None, collapse_key="42").collapse_key == "42"
    own = Notification(title="t", collapse_key="mine")
    assert render(own, None, collapse_key="42").collapse_key == "mine"


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="extra"):
        Notification.model_validate({"title": "t", "colour": "red"})


@pytest.mark.parametrize("field", ["title", "body", "url", "image", "sound", "collapse_key"])
@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b"])
def test_text_postgres_cannot_store_is_refused(field: str, bad: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        Notification.model_validate({"title": "t", field: bad})


@pytest.mark.parametrize("bad", [{"k\x00": "v"}, {"k": "v\x00"}, {"k": "\udfff"}])
def test_data_postgres_cannot_store_is_refused(bad: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError, match="data"):
        Notification.model_validate({"title": "t", "data": bad})


def problems(notification: dict[str, Any]) -> dict[tuple[str | int, ...], str]:
    """Each refused field's loc and message."""
    with pytest.raises(pydantic.ValidationError) as refused:
        Notification.model_validate(notification)
    return {tuple(e["loc"]): e["msg"] for e in refused.value.errors()}


# --- kinds --------------------------------------------------------------------------------


def test_a_notification_stored_before_kinds_existed_reads_as_an_alert() -> None:
    stored = {"title": "New book", "body": "Out today", "data": {"book_id": "42"}}
    assert Notification.model_validate(stored).kind == "alert"


def test_the_kind_is_stored_only_when_it_is_not_an_alert() -> None:
    # Events keep the notification without its defaults: an alert's JSON (and an
    # idempotency key's fingerprint) is what it was before kinds existed.
    assert "kind" not in Notification(title="t").model_dump(exclude_defaults=True)
    background = Notification(kind="background", data={"a": "1"})
    assert background.model_dump(exclude_defaults=True)["kind"] == "background"


def test_an_alert_needs_its_title() -> None:
    assert problems({"body": "no title"}) == {("title",): "Field required for an alert"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", "t"), ("subtitle", "s"), ("body", "b"), ("url", "https://x.example"),
        ("image", "https://x.example/i.png"), ("badge", 1), ("sound", "default"),
        ("thread_id", "t"), ("interruption_level", "passive"), ("relevance_score", 0.5),
        ("action_category", "C"), ("actions", [{"id": "a", "title": "A"}]),
        ("mutable_content", True), ("localized", {"de": {"title": "T"}}),
    ],
)  # fmt: skip
def test_a_background_push_refuses_what_only_an_alert_shows(field: str, value: Any) -> None:
    assert field in ALERT_FIELDS
    found = problems({"kind": "background", field: value})
    assert list(found) == [(field,)]
    assert "background push shows nothing" in found[(field,)]


def test_a_background_push_takes_data_ttl_priority_collapse_key_and_category() -> None:
    Notification.model_validate(
        {"kind": "background", "data": {"sync": "1"}, "ttl": 60, "priority": "normal",
         "collapse_key": "sync", "category": "sync"}
    )  # fmt: skip


def test_an_unknown_kind_is_refused_naming_the_kinds() -> None:
    found = problems({"kind": "voip", "title": "t"})
    assert "'alert', 'background' or 'liveactivity'" in found[("kind",)]


# --- Live Activities ----------------------------------------------------------------------


def test_a_live_activity_update_takes_its_block_an_alert_and_a_relevance_score() -> None:
    Notification.model_validate(
        {"kind": "liveactivity", "title": "Goal", "body": "1-0", "relevance_score": 0.5,
         "priority": "normal", "live_activity": {"event": "update", "content_state": {"s": 1}}}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "loc", "says"),
    [
        ({"live_activity": None}, ("live_activity",), "Field required"),
        ({"live_activity": {"event": "update"}}, ("live_activity", "content_state"),
         "Field required for update"),
        ({"live_activity": {"event": "start", "content_state": {}}},
         ("live_activity", "attributes_type"), "Field required for start"),
        ({"live_activity": {"event": "update", "content_state": {}, "attributes": {}}},
         ("live_activity", "attributes"), "only a start"),
        ({"live_activity": {"event": "update", "content_state": {}, "dismissal_date": 1}},
         ("live_activity", "dismissal_date"), "only an end"),
        ({"live_activity": {"event": "pause", "content_state": {}}},
         ("live_activity", "event"), "'start', 'update' or 'end'"),
        ({"live_activity": {"event": "update", "content_state": [1]}},
         ("live_activity", "content_state"), "dictionary"),
        ({"live_activity": {"event": "end"}, "body": "b"}, ("title",), "Field required"),
        ({"live_activity": {"event": "end"}, "data": {"a": "b"}}, ("data",), "does not carry"),
        ({"live_activity": {"event": "end"}, "badge": 1}, ("badge",), "does not carry"),
        # What PostgreSQL could not store or orjson encode, refused at the door.
        ({"live_activity": {"event": "update", "content_state": {"s": "a\x00b"}}},
         ("live_activity", "content_state", "s"), "NUL"),
        ({"live_activity": {"event": "update", "content_state": {"s": "\ud800"}}},
         ("live_activity", "content_state", "s"), "surrogate"),
        ({"live_activity": {"event": "update", "content_state": {"n": 2**64}}},
         ("live_activity", "content_state", "n"), "64 bits"),
    ],
)  # fmt: skip
def test_a_live_activity_push_is_held_to_apples_rules(
    fields: dict[str, Any], loc: tuple[str, ...], says: str
) -> None:
    found = problems({"kind": "liveactivity", **fields})
    assert says in found[loc], found


def test_only_a_live_activity_push_has_a_live_activity_block() -> None:
    found = problems({"title": "t", "live_activity": {"event": "end"}})
    assert "only a liveactivity push" in found[("live_activity",)]


# --- data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (3, '"3", not 3'),
        (1.5, '"1.5", not 1.5'),
        (True, '"true", not true'),
        (None, "not null: encode it as a string"),
        (["a"], "not a list: encode it as a string"),
        ({"a": "b"}, "not an object: encode it as a string"),
    ],
)
def test_data_values_must_be_strings_as_fcm_wants(value: Any, says: str) -> None:
    found = problems({"title": "t", "data": {"count": value}})
    assert list(found) == [("data", "count")]
    assert found["data", "count"].startswith("data values must be strings (FCM takes no other)")
    assert says in found["data", "count"]


@pytest.mark.parametrize(
    ("key", "owner"),
    [("from", "FCM"), ("message_type", "FCM"), ("google.c.a", "FCM"),
     ("gcm.notification.title", "FCM"), ("aps", "APNs")],
)  # fmt: skip
def test_data_keys_a_push_service_reserves_are_refused(key: str, owner: str) -> None:
    assert problems({"title": "t", "data": {key: "x"}}) == {
        ("data", key): f"a key {owner} reserves; name it otherwise"
    }


def test_a_data_key_merely_like_a_reserved_one_is_kept() -> None:
    Notification(title="t", data={"fromage": "brie", "gcm": "x", "google": "y"})


# --- alert options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("interruption_level", "loud"), ("relevance_score", 1.5), ("relevance_score", -0.1),
     ("actions", [{"id": "a", "title": "A"}] * 3), ("actions", [{"id": "no spaces", "title": "A"}]),
     ("actions", [{"id": "a", "title": ""}]), ("thread_id", ""), ("action_category", "x" * 129)],
)  # fmt: skip
def test_alert_options_out_of_range_are_refused_naming_the_field(field: str, value: Any) -> None:
    assert {loc[0] for loc in problems({"title": "t", field: value})} == {field}


def test_a_localized_subtitle_is_chosen_with_the_title() -> None:
    note = Notification(
        title="New book", subtitle="By Ada", localized={"de": LocalizedText(subtitle="Von Ada")}
    )
    assert (
        render(note, "de", collapse_key="1").subtitle,
        render(note, "fr", collapse_key="1").subtitle,
    ) == ("Von Ada", "By Ada")


def test_a_rendered_background_push_has_no_text() -> None:
    rendered = render(Notification(kind="background", data={"a": "1"}), "de", collapse_key="9")
    assert (rendered.kind, rendered.title, rendered.body) == ("background", None, "")
    assert rendered.payload() == {
        "kind": "background", "data": {"a": "1"}, "ttl": 86400, "priority": "high",
        "collapse_key": "9",
    }  # fmt: skip


def test_the_neutral_payload_leaves_out_the_platform_blocks() -> None:
    note = Notification(title="t", apns={"headers": {"apns-priority": "5"}})
    assert render(note, None, collapse_key="1").payload() == {
        "kind": "alert", "title": "t", "body": "", "data": {}, "ttl": 86400, "priority": "high",
        "collapse_key": "1",
    }  # fmt: skip


# --- overrides ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "name", "says"),
    [
        ("apns", "authorization", "fanout signs every request itself"),
        ("apns", "Authorization", "fanout signs every request itself"),
        ("apns", "apns-topic", "FANOUT_APNS_TOPIC"),
        ("apns", "apns-push-type", "kind"),
        ("apns", "x-custom", "not a header you can set: apns-priority"),
        ("webpush", "authorization", "fanout signs every request itself"),
        ("webpush", "content-encoding", "aes128gcm"),
        ("webpush", "crypto-key", "not a header you can set: TTL, Urgency, Topic"),
    ],
)
def test_an_override_sets_only_headers_fanout_lets_it(block: str, name: str, says: str) -> None:
    found = problems({"title": "t", block: {"headers": {name: "x"}}})
    [(loc, message)] = found.items()
    assert loc == (block, "headers", name.lower()) and says in message


@pytest.mark.parametrize(
    ("block", "name", "value"),
    [("apns", "apns-priority", "7"), ("apns", "apns-expiration", "soon"),
     ("apns", "apns-collapse-id", "é" * 33), ("webpush", "TTL", "2419201"),
     ("webpush", "Urgency", "urgent"), ("webpush", "Topic", "a" * 33)],
)  # fmt: skip
def test_an_override_header_holds_what_the_service_takes(block: str, name: str, value: str) -> None:
    assert list(problems({"title": "t", block: {"headers": {name: value}}})) == [
        (block, "headers", name)
    ]


def test_web_push_header_names_are_taken_in_any_case() -> None:
    note = Notification(title="t", webpush={"headers": {"ttl": "60", "URGENCY": "low"}})
    assert note.webpush is not None and note.webpush.headers == {"TTL": "60", "Urgency": "low"}


@pytest.mark.parametrize(
    ("override", "loc"),
    [
        ({"apns": {"payload": {"aps": "x"}}}, ("apns", "payload", "aps")),
        ({"apns": {"payload": []}}, ("apns", "payload")),
        ({"apns": {"payload": {"n": 2**64}}}, ("apns", "payload", "n")),
        ({"webpush": {"payload": {"deep": {"a": [{"b": 1}]} }}}, None),
        ({"fcm": {"token": "x"}}, ("fcm", "token")),
        ({"fcm": {"android": {"priority": "high"}}}, ("fcm", "android", "priority")),
        ({"fcm": {"android": {"data": {"n": 1}}}}, ("fcm", "android", "data", "n")),
        ({"fcm": {"webpush": {"headers": {"TTL": "x"}}}}, ("fcm", "webpush", "headers", "TTL")),
        ({"apns": {"payload": {"aps": {"interruption-level": "loud"}}}},
         ("apns", "payload", "aps", "interruption-level")),
        ({"apns": {"payload": {"aps": {"relevance-score": 2}}}},
         ("apns", "payload", "aps", "relevance-score")),
    ],
)  # fmt: skip
def test_overrides_are_json_objects_a_service_takes(override: dict[str, Any], loc: Any) -> None:
    if loc is None:
        Notification.model_validate({"title": "t", **override})
    else:
        assert loc in problems({"title": "t", **override})


def test_an_override_nested_past_32_levels_is_refused() -> None:
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"a": deep}
    found = problems({"title": "t", "webpush": {"payload": deep}})
    [(loc, message)] = found.items()
    assert loc[:2] == ("webpush", "payload") and "32 levels" in message


@pytest.mark.parametrize(
    ("override", "loc"),
    [
        ({"apns": {"headers": {"apns-priority": "10"}}}, ("apns", "headers", "apns-priority")),
        ({"fcm": {"apns": {"headers": {"apns-priority": "10"}}}},
         ("fcm", "apns", "headers", "apns-priority")),
        ({"apns": {"payload": {"aps": {"alert": "hi"}}}}, ("apns", "payload", "aps", "alert")),
        ({"apns": {"payload": {"aps": {"sound": "a"}}}}, ("apns", "payload", "aps", "sound")),
        ({"fcm": {"apns": {"payload": {"aps": {"badge": 1}}}}},
         ("fcm", "apns", "payload", "aps", "badge")),
        ({"fcm": {"android": {"notification": {"title": "t"}}}},
         ("fcm", "android", "notification")),
    ],
)  # fmt: skip
def test_a_background_push_cannot_be_made_to_show_through_an_override(
    override: dict[str, Any], loc: tuple[str, ...]
) -> None:
    assert list(problems({"kind": "background", **override})) == [loc]


@pytest.mark.parametrize(
    ("notification", "loc"),
    [
        ({"title": "t"}, None),
        ({"title": "t", "interruption_level": "time-sensitive"}, None),
        ({"title": "t", "interruption_level": "critical"}, ("interruption_level",)),
        ({"title": "t", "apns": {"payload": {"aps": {"interruption-level": "critical"}}}},
         ("apns", "payload", "aps", "interruption-level")),
        ({"title": "t", "apns": {"payload": {"aps": {"sound": {"critical": 1, "name": "a"}}}}},
         ("apns", "payload", "aps", "sound")),
        ({"title": "t", "fcm": {"apns": {"payload": {"aps": {"interruption-level": "critical"}}}}},
         ("fcm", "apns", "payload", "aps", "interruption-level")),
    ],
)  # fmt: skip
def test_where_a_critical_alert_is_asked_for(
    notification: dict[str, Any], loc: tuple[str, ...] | None
) -> None:
    assert critical_asked(Notification.model_validate(notification)) == loc
