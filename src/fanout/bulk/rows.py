"""A record checked as the API checks the same thing, and turned into the tuple COPY
sends to the staging table (store/staging.py's columns, in order); a bad one raises
RowError with the reason, naming the field.

Devices are checked as the API's own models check them (api/schemas.py's DeviceIn): a
malformed APNs token, an unknown platform, a Web Push subscription without its keys are
refused here with the very message POST /v1/devices gives. A plain valid row takes a fast
path of DeviceIn's own patterns (identifiers.py); any other goes through DeviceIn.
External ids and topic keys by identifiers.py.
Whether the user exists is the database's to say (the staged statement reports the lines).

A record's fields are fanout's (the columns ``fanout export`` writes), or a source's
mapped by MAPPINGS (``--mapping onesignal|firebase``).
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pydantic

from fanout import identifiers
from fanout.errors import FanoutError
from fanout.identifiers import TOPIC_PATTERN, USER_ID_PATTERN, is_topic_key, is_user_id
from fanout.user_attributes import USER_ATTRIBUTES

Record = dict[str, Any]

# The flat columns of each kind, as the export writes them and the import reads them.
COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("user_id", *(a.name for a in USER_ATTRIBUTES)),
    "devices": (
        "user_id",
        "platform",
        "token",
        "web_push_p256dh",
        "web_push_auth",
        "locale",
        "apns_environment",
    ),
    "subscriptions": ("topic", "user_id"),
}


class RowError(FanoutError, ValueError):
    """A row that cannot be imported; str() is the reason, naming the field."""


@functools.cache
def _device_adapter() -> pydantic.TypeAdapter[Any]:
    """The API's DeviceIn, loaded on the first row the fast path leaves to it: importing
    api/schemas.py (the API's every model, and what they import) took ~1-4 s of the
    import's start on the loaded 2-core machine (python -X importtime)."""
    from fanout.api.schemas import DeviceIn

    return pydantic.TypeAdapter[Any](DeviceIn)


def _user_id(record: Record, field: str = "user_id") -> str:
    value = record.get(field)
    if value is None:
        raise RowError(f"{field}: missing")
    if not isinstance(value, str) or not is_user_id(value):
        raise RowError(f"{field}: not an external user id ({USER_ID_PATTERN})")
    return value


def user_row(line: int, record: Record) -> tuple[Any, ...]:
    """A users record as (line, user_id, *USER_ATTRIBUTES); an absent attribute is None
    (the stored value is kept)."""
    values: list[Any] = [line, _user_id(record)]
    for attribute in USER_ATTRIBUTES:
        value = record.get(attribute.name)
        try:
            values.append(None if value is None or value == "" else attribute.parse(value))
        except ValueError as exc:
            raise RowError(f"{attribute.name}: {exc}") from None
    return tuple(values)


def _device_in(record: Record) -> dict[str, Any]:
    """A flat (or API-shaped) devices record in POST /v1/devices's shape."""
    shaped: dict[str, Any] = {"user_id": record.get("user_id"), "platform": record.get("platform")}
    platform = record.get("platform")
    if platform == "webpush":
        subscription = record.get("subscription")
        if subscription is None:
            keys = {
                "p256dh": record.get("web_push_p256dh", record.get("p256dh")),
                "auth": record.get("web_push_auth", record.get("auth")),
            }
            subscription = {
                "endpoint": record.get("endpoint", record.get("token")),
                "keys": {k: v for k, v in keys.items() if v is not None},
            }
            if not subscription["keys"]:
                del subscription["keys"]
        shaped["subscription"] = subscription
    else:
        shaped["token"] = record.get("token")
    if platform == "apns" and "apns_environment" in record:
        shaped["apns_environment"] = record["apns_environment"]
    if "locale" in record:
        shaped["locale"] = record["locale"]
    return {k: v for k, v in shaped.items() if v is not None}


def _reason(exc: pydantic.ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    # The discriminated union puts the platform's name first in the location: drop it.
    loc = [str(p) for p in error["loc"] if p not in ("apns", "fcm", "webpush")]
    if error["type"] == "union_tag_invalid":
        return "platform: not one of apns, fcm, webpush"
    if error["type"] == "union_tag_not_found":
        return "platform: missing"
    if error["type"] == "missing":
        return f"{'.'.join(loc)}: missing"
    return f"{'.'.join(loc)}: {error['msg']}"


def checked_device_row(line: int, record: Record) -> tuple[Any, ...]:
    """A devices record, checked by the API's DeviceIn, as (line, user_id, platform,
    token, p256dh, auth, locale, apns_sandbox)."""
    try:
        device = _device_adapter().validate_python(_device_in(record))
    except pydantic.ValidationError as exc:
        raise RowError(_reason(exc)) from None
    if device.platform == "webpush":
        keys = device.subscription.keys
        token, p256dh, auth = device.subscription.endpoint, keys.p256dh, keys.auth
    else:
        token, p256dh, auth = device.token, None, None
    sandbox = device.platform == "apns" and device.apns_environment == "sandbox"
    return (line, device.user_id, device.platform, token, p256dh, auth, device.locale, sandbox)


# The fast path: DeviceIn's own patterns (identifiers.py), compiled once and matched whole
# (fullmatch: Python's $ would also match before a final newline, pydantic's Rust regex
# does not).
def _whole(pattern: str) -> Callable[[str], re.Match[str] | None]:
    return re.compile(pattern.removeprefix("^").removesuffix("$")).fullmatch


_USER = _whole(USER_ID_PATTERN)
_LOCALE = _whole(identifiers.LOCALE_PATTERN)
_APNS_TOKEN = _whole(identifiers.APNS_TOKEN_PATTERN)
_FCM_TOKEN = _whole(identifiers.FCM_TOKEN_PATTERN)
_ENDPOINT = _whole(identifiers.WEB_PUSH_ENDPOINT_PATTERN)
_ENDPOINT_MAX = identifiers.WEB_PUSH_ENDPOINT_MAX
_KEY = _whole(identifiers.BASE64URL_PATTERN)
_KEY_MAX = identifiers.BASE64URL_MAX
# Fields only the API-shaped or alternative spellings use: such a record takes DeviceIn.
_OTHER_SHAPES = ("subscription", "endpoint", "p256dh", "auth")


def _fast_device_row(line: int, record: Record) -> tuple[Any, ...] | None:
    """The staging tuple of a flat devices record DeviceIn plainly accepts (every value a
    string matching DeviceIn's pattern); None for anything else, which ``device_row``
    hands to DeviceIn itself, for its verdict and its reason. tests/unit/test_rows.py
    checks the two agree on valid and invalid records alike.

    Why by hand: DeviceIn per row was 60% of reading and checking a devices CSV
    (cProfile, bench/import.py's file), and that is the import's Python side. Checking
    alone, each function over the same 200,000 rows already read (two runs on the loaded 2-core
    machine, load average 13): 40,000-52,000 rows/s through DeviceIn, 110,000-237,000
    rows/s by this path."""
    get = record.get
    user_id, platform, token, locale = get("user_id"), get("platform"), get("token"), get("locale")
    if type(user_id) is not str or not _USER(user_id) or type(token) is not str:
        return None
    if locale is not None and (type(locale) is not str or not _LOCALE(locale)):
        return None
    for name in _OTHER_SHAPES:
        if name in record:
            return None
    if platform == "apns":
        environment = get("apns_environment", "production")
        if not _APNS_TOKEN(token) or environment not in ("production", "sandbox"):
            return None
        return (line, user_id, "apns", token, None, None, locale, environment == "sandbox")
    if platform == "fcm":
        if not _FCM_TOKEN(token):
            return None
        return (line, user_id, "fcm", token, None, None, locale, False)
    if platform == "webpush":
        p256dh, auth = get("web_push_p256dh"), get("web_push_auth")
        if (
            len(token) > _ENDPOINT_MAX
            or not _ENDPOINT(token)
            or type(p256dh) is not str
            or type(auth) is not str
            or len(p256dh) > _KEY_MAX
            or len(auth) > _KEY_MAX
            or not _KEY(p256dh)
            or not _KEY(auth)
        ):
            return None
        return (line, user_id, "webpush", token, p256dh, auth, locale, False)
    return None


_DEVICE_COLUMNS = frozenset(COLUMNS["devices"])
_ENVIRONMENTS = ("", "production", "sandbox")  # "": absent, production


def csv_device_rows(stream: BinaryIO) -> Iterator[tuple[int, Record | str | tuple[Any, ...]]]:
    """The numbered records of a devices CSV file, as readers.csv_records numbers and
    reads them, except that a plain valid row comes as its staging tuple already (row_of
    passes it through): no csv.reader row, no dict, no call per field. A row is plain when
    its line has no quote or NUL (so str.split(",") is what the csv module would read) and
    it passes the checks of ``_fast_device_row``; any other line goes to the csv module
    (with the lines a quoted field spans) and comes as csv_records's record, for
    ``device_row``'s verdict. A header naming other columns than COLUMNS["devices"] (or
    one twice): every row as csv_records reads it. tests/unit/test_rows.py checks both
    give the same rows and reasons over files with every kind of line.

    Why: reading and checking is the import's Python side, on the cores PostgreSQL's
    chunks need too. Reading, checking and hashing the 300,000 rows of bench/import.py's
    devices file (/tmp script, best of two each, the loaded 2-core machine, one run):
    206,000 rows/s by csv_records and device_row, 391,000 rows/s by this reader."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    lines = iter(text)
    header_line = next(lines, None)
    if header_line is None:
        return
    header_reader = csv.reader(itertools.chain([header_line], lines))
    names = [name.strip() for name in next(header_reader, [])]
    number = header_reader.line_num
    if not names or len(set(names)) != len(names) or not _DEVICE_COLUMNS.issuperset(names):
        yield from csv_rest(names, lines, number)
        return
    width = len(names)
    index = {name: i for i, name in enumerate(names)}
    # An absent column reads as the empty field at index `width` (rows are padded).
    iu, ip, it, ik, ia, il, ie = (index.get(c, width) for c in COLUMNS["devices"])
    pad = [""] * (width + 1)
    user_ok, locale_ok, apns_ok, fcm_ok, endpoint_ok, key_ok = (
        _USER,
        _LOCALE,
        _APNS_TOKEN,
        _FCM_TOKEN,
        _ENDPOINT,
        _KEY,
    )
    endpoint_max, key_max = _ENDPOINT_MAX, _KEY_MAX
    for raw in lines:
        number += 1
        if '"' in raw or "\x00" in raw:
            record, used = csv_record(names, raw, lines, number)
            number += used - 1
            if record is not None:
                yield number, record
            continue
        fields = raw.rstrip("\r\n").split(",")
        if len(fields) > width:
            yield number, f"{len(fields)} fields, the header names {width}"
            continue
        if fields == [""]:
            continue  # a blank line, which csv.reader skips
        fields += pad[len(fields) :]
        user, platform, token, locale = fields[iu], fields[ip], fields[it], fields[il]
        if (
            user_ok(user)
            and token
            and (not locale or locale_ok(locale))
            and (
                (platform == "apns" and apns_ok(token) and fields[ie] in _ENVIRONMENTS)
                or (platform == "fcm" and fcm_ok(token))
                or (
                    platform == "webpush"
                    and len(token) <= endpoint_max
                    and endpoint_ok(token)
                    and 0 < len(fields[ik]) <= key_max
                    and 0 < len(fields[ia]) <= key_max
                    and key_ok(fields[ik])
                    and key_ok(fields[ia])
                )
            )
        ):
            webpush = platform == "webpush"
            yield (
                number,
                (
                    number,
                    user,
                    platform,
                    token,
                    fields[ik] if webpush else None,
                    fields[ia] if webpush else None,
                    locale or None,
                    platform == "apns" and fields[ie] == "sandbox",
                ),
            )
        else:
            yield number, {n: v for n, v in zip(names, fields, strict=False) if v != ""}


def csv_record(
    names: list[str], first: str, lines: Iterator[str], number: int
) -> tuple[Record | str | None, int]:
    """The record csv_records makes of the CSV row starting with the line ``first`` (and
    the further lines a quoted field spans, taken from ``lines``): the record (None for an
    empty row) and how many lines it took."""
    reader = csv.reader(itertools.chain([first], lines))
    row = next(reader, [])
    if not row:
        return None, reader.line_num
    if len(row) > len(names):
        return f"{len(row)} fields, the header names {len(names)}", reader.line_num
    return {n: v for n, v in zip(names, row, strict=False) if v != ""}, reader.line_num


def csv_rest(
    names: list[str], lines: Iterator[str], number: int
) -> Iterator[tuple[int, Record | str | tuple[Any, ...]]]:
    """The rest of a CSV file after line ``number``, as csv_records reads it."""
    for raw in lines:
        number += 1
        record, used = csv_record(names, raw, lines, number)
        number += used - 1
        if record is not None:
            yield number, record


def device_row(line: int, record: Record) -> tuple[Any, ...]:
    """A devices record as (line, user_id, platform, token, p256dh, auth, locale,
    apns_sandbox): by the fast path when it plainly passes, else checked by DeviceIn."""
    return _fast_device_row(line, record) or checked_device_row(line, record)


def subscription_row(line: int, record: Record) -> tuple[Any, ...]:
    """A subscriptions record as (line, topic, user_id)."""
    topic = record.get("topic")
    if topic is None:
        raise RowError("topic: missing")
    if not isinstance(topic, str) or not is_topic_key(topic):
        raise RowError(f"topic: not a topic key ({TOPIC_PATTERN})")
    return (line, topic, _user_id(record))


ROW_OF: dict[str, Callable[[int, Record], tuple[Any, ...]]] = {
    "users": user_row,
    "devices": device_row,
    "subscriptions": subscription_row,
}


# --- Other services' exports ---------------------------------------------------------------

# OneSignal's Subscriptions CSV export (POST /players/csv_export; documented columns:
# id, identifier, session_count, language, timezone, game_version, device_os, device_type,
# device_model, ad_id, tags, last_active, playtime, amount_spent, created_at,
# invalid_identifier, badge_count, and the extra_fields external_user_id, web_auth,
# web_p256). device_type: 0 iOS, 1 Android, 5 Chrome, 8 Firefox, 17 Edge (web push); other
# types (email 11, SMS 14, ...) are not push devices and are rejected.
ONESIGNAL_PLATFORMS = {"0": "apns", "1": "fcm", "5": "webpush", "8": "webpush", "17": "webpush"}


def _from_onesignal(kind: str, record: Record) -> Record:
    if kind == "subscriptions":
        raise RowError("the onesignal mapping has no subscriptions (OneSignal has no topics)")
    mapped: Record = {"user_id": record.get("external_user_id")}
    if mapped["user_id"] is None:
        raise RowError("external_user_id: missing (export it with extra_fields)")
    if kind == "users":
        return mapped
    device_type = str(record.get("device_type", ""))
    platform = ONESIGNAL_PLATFORMS.get(device_type)
    if platform is None:
        raise RowError(f"device_type: {device_type or 'missing'} is not a push device")
    if str(record.get("invalid_identifier", "")).lower() in ("t", "true", "1"):
        raise RowError("invalid_identifier: OneSignal marks this token invalid")
    mapped.update(
        platform=platform,
        token=record.get("identifier"),
        web_push_p256dh=record.get("web_p256"),
        web_push_auth=record.get("web_auth"),
        locale=record.get("language"),
    )
    return {k: v for k, v in mapped.items() if v is not None}


# A Firebase token list: Firebase has no export of FCM tokens (an app keeps them itself,
# often in Firestore beside the Firebase Auth uid), so this is the shape such a list
# usually has: uid, and the token as token, fcm_token or registration_token. Every row is
# an FCM device.
def _from_firebase(kind: str, record: Record) -> Record:
    if kind == "subscriptions":
        raise RowError("the firebase mapping has no subscriptions")
    mapped: Record = {"user_id": record.get("uid", record.get("user_id"))}
    if kind == "devices":
        mapped["platform"] = "fcm"
        mapped["token"] = record.get(
            "token", record.get("fcm_token", record.get("registration_token"))
        )
    return {k: v for k, v in mapped.items() if v is not None}


MAPPINGS: dict[str, Callable[[str, Record], Record]] = {
    "onesignal": _from_onesignal,
    "firebase": _from_firebase,
}


def row_of(
    kind: str, line: int, record: Record | str | tuple[Any, ...], mapping: str | None
) -> tuple[Any, ...]:
    """The staging tuple of a numbered record (a string: the reader's reason it is bad)."""
    if isinstance(record, tuple):
        return record  # a staging tuple already (csv_device_rows)
    if isinstance(record, str):
        raise RowError(record)
    if mapping is not None:
        record = MAPPINGS[mapping](kind, record)
    return ROW_OF[kind](line, record)
