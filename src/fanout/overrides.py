"""Per-platform overrides: what a publisher adds to one provider's payload and headers.

For what fanout does not model (an APNs critical sound's volume, an Android channel id,
a Web Push ``requireInteraction``), a notification carries ``apns``, ``fcm`` and
``webpush`` blocks. Each is checked here at publish: header names fanout knows (never
``authorization``, never what fanout owns: the topic, the push type, the target), JSON
objects only, and values a push service takes. The provider merges its block into the
payload it rendered as a JSON Merge Patch (RFC 7396: objects merge key by key, ``null``
removes a key, anything else replaces), and the API checks the merged payload against
the provider's limit (``providers/limits.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

# Deeper than any payload a push service documents; orjson refuses past 255 levels, and
# a request body could nest far deeper than that.
MAX_DEPTH = 32
# orjson (what the store and the providers encode with) writes 64-bit integers only.
_INT_RANGE = range(-(2**63), 2**64)


def _matching(pattern: str) -> Callable[[str], bool]:
    return lambda value: re.fullmatch(pattern, value) is not None


# APNs headers a publisher may set: (what a value must be, said as). The topic and the
# push type follow from FANOUT_APNS_TOPIC and the notification's kind; a priority of 10
# on a background push is refused by the notification (Apple refuses it).
APNS_HEADERS: dict[str, tuple[Callable[[str], bool], str]] = {
    "apns-priority": (_matching(r"1|5|10"), "1, 5 or 10"),
    "apns-expiration": (_matching(r"[0-9]{1,10}"), "a UNIX time in seconds (0: now or never)"),
    # Apple: at most 64 bytes (BadCollapseId).
    "apns-collapse-id": (lambda v: 0 < len(v.encode()) <= 64, "1 to 64 bytes"),
}
# RFC 8030's request headers, by their canonical spelling (what the provider sends).
WEBPUSH_HEADERS: dict[str, tuple[Callable[[str], bool], str]] = {
    "TTL": (lambda v: re.fullmatch(r"[0-9]{1,7}", v) is not None and int(v) <= 28 * 24 * 3600,
            "seconds, at most 2419200 (28 days)"),
    "Urgency": (_matching(r"very-low|low|normal|high"), "very-low, low, normal or high"),
    "Topic": (_matching(r"[A-Za-z0-9_-]{1,32}"), "1 to 32 characters of base64url (RFC 8030)"),
}  # fmt: skip
# Headers a publisher may think to set that fanout owns: said plainly, not just "unknown".
_OWNED_HEADERS = {
    "authorization": "fanout signs every request itself; authorization cannot be set",
    "apns-topic": "the topic is FANOUT_APNS_TOPIC, with the suffix of the notification's kind",
    "apns-push-type": "the push type follows from the notification's kind",
    "apns-id": "APNs gives each request its own id; one shared by every device is refused",
    "content-encoding": "Web Push payloads are always aes128gcm (RFC 8291)",
    "content-type": "set by fanout for the encrypted payload",
}


def problem(
    loc: tuple[str | int, ...], message: str, kind: str = "value_error"
) -> InitErrorDetails:
    """One error of a ValidationError, at ``loc`` (below the model being validated)."""
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=None)


def raise_problems(title: str, problems: list[InitErrorDetails]) -> None:
    """Raise them as one ValidationError; pydantic nests each ``loc`` under the field
    being validated, so an API answer names ``notification.apns.headers.authorization``."""
    if problems:
        raise ValidationError.from_exception_data(title, problems)


def json_problems(value: Any, loc: tuple[str | int, ...] = ()) -> list[InitErrorDetails]:
    """What in a JSON value no store or provider could encode: nesting past MAX_DEPTH,
    an integer past 64 bits."""
    if len(loc) > MAX_DEPTH:
        return [problem(loc, f"nested deeper than {MAX_DEPTH} levels")]
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return []
    if isinstance(value, int):
        return [] if value in _INT_RANGE else [problem(loc, "an integer past 64 bits")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in json_problems(item, (*loc, i))]
    assert isinstance(value, dict)
    return [p for key, item in value.items() for p in json_problems(item, (*loc, key))]


HeaderRules = Mapping[str, tuple[Callable[[str], bool], str]]


def _header_names(known: HeaderRules) -> Callable[[Any], Any]:
    """Header names case-insensitively, as their canonical spelling in ``known``."""
    canonical = {name.lower(): name for name in known}

    def normalize(headers: Any) -> Any:
        if not isinstance(headers, dict):
            return headers  # pydantic says it is not an object
        return {canonical.get(str(k).lower(), str(k).lower()): v for k, v in headers.items()}

    return normalize


def header_problems(headers: Mapping[str, str], known: HeaderRules) -> list[InitErrorDetails]:
    problems = []
    for name, value in headers.items():
        if name in _OWNED_HEADERS:
            problems.append(problem(("headers", name), _OWNED_HEADERS[name]))
        elif name not in known:
            allowed = ", ".join(known)
            problems.append(problem(("headers", name), f"not a header you can set: {allowed}"))
        elif not known[name][0](value):
            problems.append(problem(("headers", name), f"must be {known[name][1]}"))
    return problems


def _a_string(value: Any) -> Any:
    # Said here rather than as pydantic's "Input should be a valid string": FCM refuses a
    # number in any data map (INVALID_ARGUMENT), so fanout refuses it for every platform.
    if not isinstance(value, str):
        if isinstance(value, bool | int | float):
            written = orjson.dumps(value).decode()
            message = (
                f'data values must be strings (FCM takes no other): "{written}", not {written}'
            )
        else:
            given = (
                "null" if value is None else "a list" if isinstance(value, list) else "an object"
            )
            message = (
                f"data values must be strings (FCM takes no other), not {given}: encode it as "
                "a string (JSON, for instance)"
            )
        raise PydanticCustomError("string_type", message)
    return value


StringValue = Annotated[str, BeforeValidator(_a_string)]
JsonObject = dict[str, JsonValue]
_CONFIG = ConfigDict(extra="forbid", frozen=True)


class _Checked(BaseModel):
    """Headers checked against ``KNOWN_HEADERS``; every JSON field kept encodable."""

    model_config = _CONFIG
    KNOWN_HEADERS: ClassVar[HeaderRules] = {}

    @model_validator(mode="after")
    def _plain(self) -> _Checked:
        problems: list[InitErrorDetails] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "headers":
                problems += header_problems(value, self.KNOWN_HEADERS)
            elif value is not None and not isinstance(value, BaseModel):
                problems += json_problems(value, (name,))
        raise_problems(type(self).__name__, problems)
        return self


class ApnsOverride(_Checked):
    """Merged into the APNs request: headers by name, the payload as a merge patch."""

    KNOWN_HEADERS = APNS_HEADERS
    headers: Annotated[dict[str, str], BeforeValidator(_header_names(APNS_HEADERS))] = Field(
        default_factory=dict, description="apns-priority, apns-expiration, apns-collapse-id."
    )
    payload: JsonObject = Field(
        default_factory=dict,
        description='Merged into the payload (RFC 7396), e.g. {"aps": {"target-content-id": '
        '"book-1001"}, "campaign": "spring"}.',
    )

    @model_validator(mode="after")
    def _aps_stays_an_object(self) -> ApnsOverride:
        if "aps" in self.payload and not isinstance(self.payload["aps"], dict):
            refused = "must be an object: Apple refuses a payload without aps"
            raise_problems("ApnsOverride", [problem(("payload", "aps"), refused)])
        _open_token_stays_fanouts("ApnsOverride", self.payload)
        return self


class WebPushOverride(_Checked):
    """Merged into the Web Push request: headers by name, the JSON the service worker
    reads as a merge patch (before encryption)."""

    KNOWN_HEADERS = WEBPUSH_HEADERS
    headers: Annotated[dict[str, str], BeforeValidator(_header_names(WEBPUSH_HEADERS))] = Field(
        default_factory=dict, description="TTL, Urgency, Topic (RFC 8030)."
    )
    payload: JsonObject = Field(
        default_factory=dict, description="Merged into the JSON the service worker reads."
    )

    @model_validator(mode="after")
    def _no_open_token(self) -> WebPushOverride:
        _open_token_stays_fanouts("WebPushOverride", self.payload)
        return self


def _open_token_stays_fanouts(title: str, payload: JsonObject) -> None:
    """``fo_open`` is the open token each push gets per device (open_tokens.py), added
    beside the payload's keys: a publisher's own would be a second key of that name."""
    if "fo_open" in payload:
        refused = "a key fanout reserves (the open token); name it otherwise"
        raise_problems(title, [problem(("payload", "fo_open"), refused)])


class FcmAndroidOverride(BaseModel):
    """FCM's AndroidConfig: its fields as FCM names them, checked where FCM is strict."""

    model_config = ConfigDict(extra="allow", frozen=True)

    priority: Literal["NORMAL", "HIGH"] | None = None
    data: dict[str, StringValue] | None = None


class FcmWebPushOverride(_Checked):
    """FCM's WebpushConfig."""

    KNOWN_HEADERS = WEBPUSH_HEADERS
    headers: Annotated[dict[str, str], BeforeValidator(_header_names(WEBPUSH_HEADERS))] = Field(
        default_factory=dict
    )
    data: dict[str, StringValue] | None = None
    notification: JsonObject | None = None
    fcm_options: JsonObject | None = None


class FcmOverride(_Checked):
    """Merged into the FCM message; its target, notification and data are fanout's."""

    android: FcmAndroidOverride | None = None
    apns: ApnsOverride | None = None
    webpush: FcmWebPushOverride | None = None
    fcm_options: JsonObject | None = None

    @model_validator(mode="after")
    def _android_is_plain(self) -> FcmOverride:
        if self.android is not None:
            extra = self.android.model_extra or {}
            raise_problems("FcmOverride", json_problems(extra, ("android",)))
        return self

    def patch(self) -> JsonObject:
        """The merge patch for the message (FCM's own field names)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)


def merge_patch(target: JsonValue, patch: JsonValue) -> JsonValue:
    """RFC 7396: ``patch`` applied to ``target`` (neither is changed)."""
    if not isinstance(patch, dict):
        return patch
    merged: dict[str, JsonValue] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def merged(target: JsonObject, patch: JsonObject) -> JsonObject:
    """``merge_patch`` of two objects, typed as one."""
    result = merge_patch(target, patch)
    assert isinstance(result, dict)
    return result
