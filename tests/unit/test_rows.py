"""bulk/rows.py: a record checked as the API checks it, mapped from other services."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest

from fanout.bulk.readers import csv_records
from fanout.bulk.rows import (
    COLUMNS,
    RowError,
    _fast_device_row,
    checked_device_row,
    csv_device_rows,
    device_row,
    row_of,
)

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


def _device_records() -> list[dict[str, Any]]:
    """Valid and invalid devices records, near each rule's edges, and random ones."""
    good = {
        "apns": {"user_id": "u-1", "platform": "apns", "token": APNS, "locale": "en"},
        "fcm": {"user_id": "u.2@x", "platform": "fcm", "token": "fcm:tok_1"},
        "webpush": {
            "user_id": "u:3",
            "platform": "webpush",
            "token": "https://push.example/1",
            "web_push_p256dh": "BKey-_1=",
            "web_push_auth": "Au_th",
        },
    }
    variants: list[dict[str, Any]] = [
        {"user_id": "-leading-dash"},
        {"user_id": "u" * 128},
        {"user_id": "u" * 129},
        {"user_id": "u\n"},
        {"user_id": 7},
        {"user_id": "ü"},
        {"locale": "de_DE"},
        {"locale": "de-"},
        {"locale": "d"},
        {"locale": "deu-CH-x1"},
        {"locale": "en\n"},
        {"locale": 1},
        {"token": "ab" * 8},
        {"token": "ab" * 7},
        {"token": "ab" * 100},
        {"token": "ab" * 101},
        {"token": "abc"},
        {"token": APNS + "\n"},
        {"token": "x" * 4096},
        {"token": "x" * 4097},
        {"token": "has space"},
        {"token": "https://push.example/" + "p" * 2030},
        {"token": "https://push.example/" + "p" * 2027},
        {"token": "http://push.example/1"},
        {"token": "https://push.example/é"},
        {"token": ""},
        {"token": 5},
        {"apns_environment": "sandbox"},
        {"apns_environment": "production"},
        {"apns_environment": "dev"},
        {"apns_environment": None},
        {"web_push_p256dh": "k" * 256},
        {"web_push_p256dh": "k" * 257},
        {"web_push_p256dh": "k==="},
        {"web_push_p256dh": "=k"},
        {"web_push_auth": None},
        {"web_push_auth": "a+b"},
        {"p256dh": "BKey"},
        {"endpoint": "https://push.example/2"},
        {"subscription": {"endpoint": "https://p.example/1", "keys": {"p256dh": "a", "auth": "b"}}},
        {"platform": "APNS"},
        {"platform": None},
        {"extra": "ignored"},
    ]
    records = [dict(base) for base in good.values()]
    records += [{**base, **change} for base in good.values() for change in variants]
    records += [
        {k: v for k, v in base.items() if k != drop} for base in good.values() for drop in base
    ]
    alphabet = "aZ09-_.:@=+/ \n\x00é"
    rng = random.Random(25)
    for _ in range(3000):
        base = dict(rng.choice(list(good.values())))
        field = rng.choice([*base, "locale", "apns_environment"])
        base[field] = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        records.append(base)
    return records


def test_the_fast_device_path_agrees_with_device_in_on_every_record() -> None:
    fast = 0
    for line, record in enumerate(_device_records(), start=2):
        try:
            expected: tuple[Any, ...] | str = checked_device_row(line, record)
        except RowError as exc:
            expected = f"refused: {exc}"
        try:
            got: tuple[Any, ...] | str = device_row(line, record)
        except RowError as exc:
            got = f"refused: {exc}"
        assert got == expected, record
        fast += _fast_device_row(line, record) is not None
    assert fast > 100  # the valid ones take the fast path


def test_the_common_devices_rows_take_the_fast_path() -> None:
    for record in (
        {"user_id": "u", "platform": "apns", "token": APNS, "apns_environment": "sandbox"},
        {"user_id": "u", "platform": "fcm", "token": "t", "locale": "de"},
        {
            "user_id": "u",
            "platform": "webpush",
            "token": "https://p.example/1",
            "web_push_p256dh": "K",
            "web_push_auth": "A",
        },
    ):
        assert _fast_device_row(2, record) == checked_device_row(2, record)


def _verdicts(numbered: Any) -> list[tuple[int, tuple[Any, ...] | str]]:
    out: list[tuple[int, tuple[Any, ...] | str]] = []
    for line, record in numbered:
        try:
            out.append((line, row_of("devices", line, record, None)))
        except RowError as exc:
            out.append((line, f"refused: {exc}"))
    return out


def _csv_field(value: Any, rng: random.Random) -> str:
    text = "" if value is None else str(value)
    if any(c in text for c in ',"\r\n') or rng.random() < 0.05:
        return '"' + text.replace('"', '""') + '"'
    return text


COLUMN_ORDERS = [
    list(COLUMNS["devices"]),
    list(reversed(COLUMNS["devices"])),
    ["platform", "token", "user_id"],
    ["user_id", "platform", "token", "web_push_p256dh", "web_push_auth"],
    [" user_id", "platform ", "token", "locale"],  # names are stripped
    ["user_id", "platform", "token", "extra"],  # a column of no device field
    ["user_id", "platform", "token", "token"],  # one named twice
    ["user_id", "platform", "token", "endpoint", "p256dh", "auth"],
]


@pytest.mark.parametrize("columns", COLUMN_ORDERS, ids=lambda c: ",".join(c))
def test_the_csv_device_reader_gives_what_the_csv_module_and_device_in_give(
    columns: list[str],
) -> None:
    """csv_device_rows against an independent reading of the same file: the csv module
    (readers.csv_records) and device_row on every record; same lines, rows and reasons."""
    rng = random.Random(len(columns))
    lines = [",".join(columns)]
    for record in _device_records():
        if any(not isinstance(v, str) for v in record.values()):
            continue  # a CSV field is a string
        lines.append(",".join(_csv_field(record.get(c), rng) for c in columns))
    plain = f"u1,apns,{APNS},,,en,sandbox"
    lines += [
        "",  # blank: skipped
        "   ",  # spaces: a record of one field
        plain + ",one-too-many",
        "u1,fcm",  # short: the rest absent
        '"u1","fcm","quoted-token"',
        'u2,fcm,"token with\nnew line",,,,',  # a field across two lines
        'u3,fcm,"t,with,commas",,,,',
        'u4,fcm,"three\nline\nfield"',
        "u5,fcm,ok-token\r",
        plain,
    ]
    text = "\r\n".join(lines[:5]) + "\n" + "\n".join(lines[5:]) + "\n"
    data = ("\ufeff" + text).encode()  # with a byte order mark, as Excel writes it
    expected = _verdicts(csv_records(io.BytesIO(data)))
    got = _verdicts(csv_device_rows(io.BytesIO(data)))
    assert got == expected
    assert len(expected) > 3000


def test_plain_csv_devices_come_as_staging_tuples() -> None:
    data = (
        "user_id,platform,token,web_push_p256dh,web_push_auth,locale,apns_environment\n"
        f"u1,apns,{APNS},,,en,sandbox\nu2,fcm,t,,,,\nu3,webpush,https://p.example/1,K,A,,\n"
    ).encode()
    rows = list(csv_device_rows(io.BytesIO(data)))
    assert rows == [
        (2, (2, "u1", "apns", APNS, None, None, "en", True)),
        (3, (3, "u2", "fcm", "t", None, None, None, False)),
        (4, (4, "u3", "webpush", "https://p.example/1", "K", "A", None, False)),
    ]


def test_an_empty_devices_csv_has_no_rows() -> None:
    assert list(csv_device_rows(io.BytesIO(b""))) == []
