"""Request and response bodies and path parameters of the HTTP API.

Unknown fields are refused everywhere.
"""

from __future__ import annotations

import functools
import zoneinfo
from datetime import datetime, time
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    RootModel,
    SkipValidation,
    StrictBool,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from fanout.identifiers import (
    APNS_TOKEN_PATTERN,
    BASE64URL_MAX,
    BASE64URL_PATTERN,
    FCM_TOKEN_PATTERN,
    TOPIC_PATTERN,
    USER_ID_PATTERN,
    WEB_PUSH_ENDPOINT_MAX,
    WEB_PUSH_ENDPOINT_PATTERN,
)
from fanout.notification import (
    CATEGORY_PATTERN,
    ActionId,
    Category,
    Identifier,
    LiveActivity,
    LiveActivityEvent,
    Locale,
    Notification,
    ShortText,
)
from fanout.overrides import problem, raise_problems
from fanout.providers.limits import oversized_payloads
from fanout.sources import MAX_QUERY_CHARS, PREFIX_PATTERN
from fanout.stages.publish import PublishOptions
from fanout.stages.schedule import parse_local_time
from fanout.store.apps import APP_KEY_PATTERN
from fanout.tags import (
    MAX_FILTER_TAGS,
    MAX_IN_VALUES,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TAGS,
    InvalidTags,
    check_tags,
    compile_filter,
)

TopicKey = Annotated[str, StringConstraints(pattern=TOPIC_PATTERN)]
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
IdempotencyKey = Annotated[
    str,
    StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$"),
    Field(
        description="Publish at most once: this API key's own. The same key with the same "
        "request returns the first event (created: false); with a different request, 409."
    ),
]
LocalTime = Annotated[
    str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$"), Field(examples=["09:00"])
]
Base64Url = Annotated[str, StringConstraints(pattern=BASE64URL_PATTERN, max_length=BASE64URL_MAX)]

MAX_BULK_SUBSCRIBERS = 50_000

TopicPath = Annotated[str, Path(pattern=TOPIC_PATTERN, examples=["author:42"])]
UserPath = Annotated[str, Path(pattern=USER_ID_PATTERN, examples=["reader-7"])]
RowIdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]  # a bigint identity column


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebPushKeys(Strict):
    p256dh: Base64Url = Field(description="The subscription's P-256 public key, base64url.")
    auth: Base64Url = Field(description="The subscription's auth secret, base64url.")


class WebPushSubscription(Strict):
    # Printable ASCII, as every push service's URL is (a host in IDNA): a NUL reached
    # PostgreSQL, which refuses it in text, as a 500 (found by the OpenAPI fuzz).
    endpoint: Annotated[
        str,
        StringConstraints(pattern=WEB_PUSH_ENDPOINT_PATTERN, max_length=WEB_PUSH_ENDPOINT_MAX),
    ] = Field(description="The push service URL from PushSubscription.endpoint.")
    keys: WebPushKeys


class _DeviceBase(Strict):
    user_id: UserId
    locale: Locale | None = None


class ApnsDeviceIn(_DeviceBase):
    platform: Literal["apns"]
    token: Annotated[str, StringConstraints(pattern=APNS_TOKEN_PATTERN)] = Field(
        description="The APNs device token, hexadecimal."
    )
    apns_environment: Literal["production", "sandbox"] = Field(
        default="production",
        description="sandbox: a debug build's token, sent to Apple's sandbox endpoint.",
    )


class FcmDeviceIn(_DeviceBase):
    platform: Literal["fcm"]
    token: Annotated[str, StringConstraints(pattern=FCM_TOKEN_PATTERN)] = Field(
        description="The FCM registration token."
    )


class WebPushDeviceIn(_DeviceBase):
    platform: Literal["webpush"]
    subscription: WebPushSubscription = Field(description="The browser's PushSubscription.")


# The platform decides the shape, and the OpenAPI document says so (a discriminated union).
DeviceIn = Annotated[ApnsDeviceIn | FcmDeviceIn | WebPushDeviceIn, Field(discriminator="platform")]


class DeviceOut(BaseModel):
    id: int


class BulkSubscribeIn(Strict):
    user_ids: list[UserId] = Field(min_length=1, max_length=MAX_BULK_SUBSCRIBERS)


class BulkSubscribeOut(BaseModel):
    requested: int
    added: int


class SubscriptionOut(BaseModel):
    topic: str
    subscribed_at: datetime


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


# ---- Audience controls: preferences, mutes, frequency caps -------------------------------

MAX_BULK_PREFERENCES = 10_000
QUIET_HOURS_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$"
CAP_CATEGORY_PATTERN = r"^(\*|" + CATEGORY_PATTERN[1:-1] + r")$"
CapCategoryPath = Annotated[
    str, Path(pattern=CAP_CATEGORY_PATTERN, description="A category, or * for every push.")
]


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _known_time_zone(name: str) -> str:
    # The IANA database's own list, not ZoneInfo(name): that also opens file paths.
    if name not in _time_zones():
        raise ValueError("not an IANA time zone name (e.g. 'Europe/Berlin')")
    return name


TimeZone = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_known_time_zone),
    # The schema lists the names (so that clients and the fuzz tests know them); the
    # check above gives the short error, rather than an enum's list of 600 names.
    Field(examples=["Europe/Berlin"], json_schema_extra={"enum": sorted(_time_zones())}),
]
QuietHours = Annotated[
    str,
    StringConstraints(pattern=QUIET_HOURS_PATTERN),
    Field(
        description="A local window, HH:MM-HH:MM (start included, end excluded), which may "
        "cross midnight (22:00-08:00); it applies only to a user with a time_zone. The same "
        "start and end is an empty window.",
        examples=["22:00-08:00"],
    ),
]


def quiet_window(quiet_hours: str | None) -> tuple[time | None, time | None]:
    """A QuietHours string as (start, end) times; (None, None) for none."""
    if quiet_hours is None:
        return None, None
    start, end = quiet_hours.split("-")
    return time.fromisoformat(start), time.fromisoformat(end)


class PreferencesIn(Strict):
    """A user's settings, replaced whole; what is left out is the default."""

    time_zone: TimeZone | None = None
    quiet_hours: QuietHours | None = None
    opted_out: bool = Field(default=False, description="No push at all.")
    opted_out_categories: list[Category] = Field(
        default_factory=list, max_length=100, description="No push of these categories."
    )


class BulkPreferencesItem(PreferencesIn):
    user_id: UserId


class BulkPreferencesIn(Strict):
    items: list[BulkPreferencesItem] = Field(min_length=1, max_length=MAX_BULK_PREFERENCES)


class BulkPreferencesOut(BaseModel):
    requested: int
    updated: int = Field(description="Users whose settings were written (each user once).")


# Tags: fanout/tags.py checks them and names the field of a mistake (pydantic's own union
# errors named the union's members); these schemas document the same bounds, so that what
# they allow is taken (the OpenAPI fuzz holds them to it). No NUL: PostgreSQL's jsonb
# refuses it in text; numbers within 64 bits.
_TAG_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_TAG_KEY, "pattern": "^[^\\x00]+$"}
_TAG_NUMBER = {"type": "number", "minimum": -(2**63), "maximum": 2**63 - 1}
_TAG_VALUE = {
    "anyOf": [
        {"type": "boolean"},
        _TAG_NUMBER,
        {"type": "string", "maxLength": MAX_TAG_VALUE, "pattern": "^[^\\x00]*$"},
    ]
}
TAGS_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_TAGS,
    "propertyNames": _TAG_NAME,
    "additionalProperties": _TAG_VALUE,
    "examples": [{"plan": "premium", "country": "DE", "age": 31}],
}
_TAG_CONDITION = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "eq": _TAG_VALUE,
        "in": {"type": "array", "items": _TAG_VALUE, "minItems": 1, "maxItems": MAX_IN_VALUES},
        **{op: _TAG_NUMBER for op in ("gt", "gte", "lt", "lte")},
        "exists": {"type": "boolean"},
    },
}
FILTER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "tags": {
            "type": "object",
            "maxProperties": MAX_FILTER_TAGS,
            "propertyNames": _TAG_NAME,
            "additionalProperties": {"anyOf": [_TAG_VALUE, _TAG_CONDITION]},
        }
    },
}


class TagsIn(RootModel[Annotated[dict[str, Any], WithJsonSchema(TAGS_SCHEMA)]]):
    """A user's tags, replaced whole: a flat map of string, number or boolean values (at
    most 100 tags, names of 64 characters, string values of 256)."""

    @model_validator(mode="after")
    def _flat_and_bounded(self) -> TagsIn:
        try:
            check_tags(self.root, path=())
        except InvalidTags as error:
            raise_problems("Tags", [problem(error.path, error.message)])
        return self


class TagsOut(BaseModel):
    user_id: str
    tags: dict[str, Any]


class MuteIn(Strict):
    until: AwareDatetime | None = Field(
        default=None, description="When the mute ends (with its UTC offset); none: never."
    )


class MuteOut(BaseModel):
    topic: str
    until: datetime | None


class PreferencesOut(BaseModel):
    user_id: str
    time_zone: str | None
    quiet_hours: str | None
    opted_out: bool
    opted_out_categories: list[str]
    mutes: list[MuteOut] = Field(description="Topics muted now.")


class FrequencyCapIn(Strict):
    max: int = Field(ge=1, le=1_000_000, description="Pushes allowed per user in the window.")
    window_seconds: int = Field(
        ge=1, le=90 * 24 * 3600, description="The rolling window, in seconds (at most 90 days)."
    )


class FrequencyCapOut(BaseModel):
    category: str = Field(description="A category, or * for every push.")
    max: int
    window_seconds: int
    updated_at: datetime


# A rate above this is no pacing (a million a minute is FCM's 10M-topic ask, #238, tenfold).
MAX_THROTTLE_PER_MINUTE = 10_000_000


# The options of a request that sets only quiet_hours, one object each (PublishOptions is
# frozen): what ``PublishOptionsIn.options`` returns for such a request.
_PLAIN_OPTIONS: dict[str, PublishOptions] = {
    "defer": PublishOptions(quiet_hours="defer"),
    "drop": PublishOptions(quiet_hours="drop"),
    "ignore": PublishOptions(quiet_hours="ignore"),
}


class PublishOptionsIn(Strict):
    """When and how the event goes out (all optional)."""

    send_at: AwareDatetime | None = Field(
        default=None,
        description="Not before this time (with an offset; Z for UTC). Held in PostgreSQL "
        "and released by the reconciler, however far ahead.",
    )
    deliver_at_local: LocalTime | None = Field(
        default=None,
        description="HH:MM on each recipient's own clock (their time zone, else "
        "FANOUT_DEFAULT_TIME_ZONE): sent in waves as each zone reaches it, the next "
        "occurrence at or after send_at (or now).",
    )
    quiet_hours: Literal["defer", "drop", "ignore"] = Field(
        default="defer",
        description="Recipients inside their quiet hours at fan-out: defer (sent when their "
        "window ends), drop (not sent, counted quiet_hours) or ignore (sent).",
    )
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="Nothing is sent after this time; what was not sent counts expired.",
    )
    throttle_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=MAX_THROTTLE_PER_MINUTE,
        description="Paced: at most this many devices a minute, across every worker (the "
        "app's default_throttle_per_minute when not given; none: as fast as it goes).",
    )
    filter: Annotated[dict[str, Any], WithJsonSchema(FILTER_SCHEMA)] | None = Field(
        default=None,
        description='Only the recipients whose tags match: {"tags": {"plan": "premium", '
        '"country": {"in": ["DE", "AT"]}, "age": {"gte": 18}}} (operators eq, in, gt, gte, '
        "lt, lte, exists; all must hold). Those left out are counted held_back.filtered.",
        examples=[{"tags": {"plan": "premium", "age": {"gte": 18}}}],
    )

    @field_validator("filter", mode="after")
    @classmethod
    def _compiles(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            compile_filter(value, path=())
        except InvalidTags as error:
            raise_problems("PublishOptions", [problem(error.path, error.message)])
        return value

    def plain_options(self) -> PublishOptions | None:
        """The options of a request that sets none but ``quiet_hours`` (most 1:1 sends), as
        a shared object; None for any other (``options``). A batch request makes up to
        1,000 of them (issue #26)."""
        if (
            self.send_at is None
            and self.deliver_at_local is None
            and self.expires_at is None
            and self.throttle_per_minute is None
            and self.filter is None
        ):
            return _PLAIN_OPTIONS[self.quiet_hours]
        return None

    def options(self) -> PublishOptions:
        return PublishOptions(
            send_at=self.send_at,
            deliver_at_local=parse_local_time(self.deliver_at_local)
            if self.deliver_at_local
            else None,
            quiet_hours=self.quiet_hours,
            expires_at=self.expires_at,
            throttle_per_minute=self.throttle_per_minute,
            tag_filter=compile_filter(self.filter),
        )


def _fits_every_platform(notification: Notification) -> Notification:
    # Each provider's payload as it will be sent, against that provider's limit: the
    # answer's loc names the platform (notification.apns, .fcm, .webpush).
    problems = [
        problem((platform,), message, "too_large")
        for platform, message in oversized_payloads(notification).items()
    ]
    if notification.kind == "liveactivity":
        problems.append(problem(("kind",), LIVE_ACTIVITY_ROUTE))
    raise_problems("Notification", problems)
    return notification


LIVE_ACTIVITY_ROUTE = (
    "a Live Activity goes to its activity's tokens: POST /v1/live-activities/{activity_id}/updates"
)


# A notification as publishing takes it: also held to each platform's payload limit.
PublishedNotification = Annotated[Notification, AfterValidator(_fits_every_platform)]


class EventIn(PublishOptionsIn):
    topic: TopicKey | None = Field(
        default=None,
        description="The topic whose subscribers get it. Without one, a `filter` is needed: "
        "the event goes to every user of the app whose tags match it.",
    )
    notification: PublishedNotification
    idempotency_key: IdempotencyKey | None = None


class DirectNotificationIn(PublishOptionsIn):
    notification: PublishedNotification
    idempotency_key: IdempotencyKey | None = None


# A batch of personalised 1:1 sends (POST /v1/notifications/batch): each item its own event.
MAX_NOTIFICATION_BATCH = 1_000


class BatchNotificationIn(DirectNotificationIn):
    user_id: UserId = Field(description="The user whose devices this item goes to.")


class NotificationBatchIn(Strict):
    # Validated item by item by the route (a bad item is refused alone, by its index),
    # so the list is taken as sent; the schema still documents each item.
    items: SkipValidation[list[BatchNotificationIn]] = Field(
        description=f"1 to {MAX_NOTIFICATION_BATCH:,} sends, each its own event with its own "
        "idempotency key.",
        json_schema_extra={"minItems": 1, "maxItems": MAX_NOTIFICATION_BATCH},
    )


class ItemProblem(BaseModel):
    loc: list[str | int] = Field(description='Where: ["body", "items", index, field …].')
    msg: str
    type: str


class BatchItemResult(BaseModel):
    event_id: int | None = Field(default=None, description="The item's event; none if refused.")
    created: bool | None = Field(
        default=None, description="False when the idempotency key named an earlier event."
    )
    errors: list[ItemProblem] | None = Field(
        default=None, description="Why the item was refused (it alone: the others stand)."
    )


class NotificationBatchAccepted(BaseModel):
    accepted: int = Field(description="Items with an event (created or found by their key).")
    refused: int
    results: list[BatchItemResult] = Field(description="One per item, in the items' order.")


ActivityPath = Annotated[str, Path(pattern=TOPIC_PATTERN, examples=["match:2026-final"])]
ApnsToken = Annotated[str, StringConstraints(pattern=r"^([0-9a-fA-F]{2}){8,100}$")]


class LiveActivityTokenIn(Strict):
    user_id: UserId
    kind: Literal["activity", "push_to_start"] = Field(
        default="activity",
        description="activity: the activity's push token (pushTokenUpdates), which its "
        "updates and end go to; push_to_start: a pushToStartToken, which a start goes to.",
    )
    token: ApnsToken = Field(description="The APNs token, hexadecimal.")
    topic: TopicKey | None = Field(
        default=None, description="The topic the activity follows (recorded with the token)."
    )
    apns_environment: Literal["production", "sandbox"] = Field(
        default="production",
        description="sandbox: a debug build's token, sent to Apple's sandbox endpoint.",
    )


class LiveActivityTokenOut(BaseModel):
    id: int


class LiveActivityAlert(Strict):
    title: ShortText
    body: ShortText = ""


class LiveActivityUpdateIn(Strict):
    """One update of a Live Activity, sent to every token registered for it (a start: to
    its push-to-start tokens) with apns-push-type liveactivity."""

    event: LiveActivityEvent
    content_state: dict[str, Any] | None = Field(
        default=None, description="The activity's ContentState (start, update; optional for end)."
    )
    stale_date: AwareDatetime | None = Field(
        default=None, description="When the system shows the activity as out of date."
    )
    dismissal_date: AwareDatetime | None = Field(
        default=None,
        description="end: when the ended activity leaves the lock screen (in the past: at "
        "once); its tokens get nothing published after it.",
    )
    alert: LiveActivityAlert | None = Field(
        default=None, description="Shown with the update (lights the screen up)."
    )
    relevance_score: Annotated[float, Field(ge=0, le=1)] | None = None
    priority: Literal[5, 10] = Field(
        default=5,
        description="APNs priority: 5, or 10 (Apple budgets 10 per hour; the event's "
        "status counts the activity's priority-10 updates of the last hour).",
    )
    attributes_type: Identifier | None = Field(
        default=None, description="start: the ActivityAttributes type the app declares."
    )
    attributes: dict[str, Any] | None = Field(
        default=None, description="start: the activity's attributes."
    )
    ttl: Annotated[int, Field(ge=0, le=28 * 24 * 3600)] = Field(
        default=3600, description="Seconds APNs may hold it for an offline device."
    )
    idempotency_key: IdempotencyKey | None = None
    _notification: Notification = PrivateAttr()

    @model_validator(mode="after")
    def _is_a_live_activity_push(self) -> LiveActivityUpdateIn:
        try:
            self._notification = Notification(
                kind="liveactivity",
                title=self.alert.title if self.alert else None,
                body=self.alert.body if self.alert else "",
                relevance_score=self.relevance_score,
                priority="high" if self.priority == 10 else "normal",
                ttl=self.ttl,
                live_activity=LiveActivity(
                    event=self.event,
                    content_state=self.content_state,
                    stale_date=_seconds(self.stale_date),
                    dismissal_date=_seconds(self.dismissal_date),
                    attributes_type=self.attributes_type,
                    attributes=self.attributes,
                ),
            )
        except ValidationError as exc:  # the model's rules, named by this body's fields
            raise_problems(
                "LiveActivityUpdate",
                [problem(_body_loc(e["loc"]), e["msg"], e["type"]) for e in exc.errors()],
            )
        oversized = oversized_payloads(self._notification).get("apns")
        if oversized:  # content_state and attributes are what can grow
            raise_problems("LiveActivityUpdate", [problem(("content_state",), oversized)])
        return self

    def notification(self) -> Notification:
        return self._notification


def _seconds(instant: datetime | None) -> int | None:
    return None if instant is None else max(0, int(instant.timestamp()))


def _body_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Where a Notification's problem is in this body: live_activity's fields are at its
    top, the alert's title is alert.title."""
    if loc[:1] == ("live_activity",):
        return loc[1:]
    return ("alert", *loc) if loc[:1] in (("title",), ("body",)) else loc


class LiveActivityUpdateAccepted(BaseModel):
    event_id: int
    created: bool = Field(description="False when the idempotency key named an earlier event.")
    timestamp: int = Field(description="Its aps.timestamp: greater than every earlier one's.")
    priority_10_last_hour: int = Field(
        description="The activity's priority-10 updates in the last hour, this one included."
    )


class OpenIn(Strict):
    token: str = Field(
        pattern=r"^[A-Za-z0-9_-]{44}$",
        description="The push's `fo_open` value, as the app received it.",
    )
    action: ActionId | None = Field(
        default=None,
        description="The action clicked (its id, as the notification's `actions` name it); "
        "none: the notification itself was opened.",
    )
    opened_at: AwareDatetime | None = Field(
        default=None,
        description="When the user opened it (the device's clock, kept between the send "
        "and now); default: when the server receives it.",
    )


class OpenAccepted(BaseModel):
    accepted: Literal[True] = Field(
        description="Always true for a token this server minted: the answer is the same "
        "whether the open counted, was counted before, or its event is gone or past the "
        "open window, so it never tells whether an event exists."
    )


class EventAccepted(BaseModel):
    event_id: int
    created: bool = Field(description="False when the idempotency key named an earlier event.")


class Health(BaseModel):
    database: str
    queue: str


class Problem(BaseModel):
    detail: str


# --- apps, their credentials and keys: the admin scope's routes ---------------------------

AppPath = Annotated[str, Path(pattern=APP_KEY_PATTERN, examples=["books-ios"])]
ProviderPath = Annotated[Literal["apns", "fcm", "webpush"], Path()]
KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", examples=["3f2a9c1b7d4e"])]


class AppIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=APP_KEY_PATTERN, examples=["books-ios"])
    name: str = Field(default="", max_length=200)


class CredentialOut(BaseModel):
    """What identifies a stored credential: never its private part."""

    provider: str
    identity: dict[str, str]
    updated_at: datetime


class AppOut(BaseModel):
    key: str
    name: str
    created_at: datetime
    credentials: list[CredentialOut] = []
    default_throttle_per_minute: int | None = Field(
        default=None, description="The pace its events take unless they set throttle_per_minute."
    )
    allow_critical: bool | None = Field(
        default=None,
        description="Whether it may publish critical alerts (Apple grants the entitlement "
        "per app); null: the deployment's FANOUT_APNS_ALLOW_CRITICAL decides.",
    )


class AppSettingsIn(BaseModel):
    """The app's settings to change; a field left out is left as it is."""

    model_config = ConfigDict(extra="forbid")

    default_throttle_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=MAX_THROTTLE_PER_MINUTE,
        description="Devices a minute its events go out at when their publish sets no "
        "throttle_per_minute; null: unpaced.",
    )
    # Strict: "yes" or 1 is refused naming the field, not read as true.
    allow_critical: StrictBool | None = Field(
        default=None,
        description="true once Apple has granted the app the critical-alerts entitlement: "
        "its critical alerts are accepted; false: refused; null: the deployment's "
        "FANOUT_APNS_ALLOW_CRITICAL decides.",
    )


class AppListed(BaseModel):
    key: str
    name: str
    created_at: datetime
    providers: list[str]


class ApnsCredentialIn(BaseModel):
    """An APNs token-based key: the .p8 file's PEM text, its key id, the team and the app's
    bundle id."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=10_000, description="The .p8 file's text (PEM).")
    key_id: str = Field(max_length=100)
    team_id: str = Field(max_length=100)
    bundle_id: str = Field(max_length=200)


class FcmCredentialIn(BaseModel):
    """A Firebase service account: the JSON Google gives, as an object or a string."""

    model_config = ConfigDict(extra="forbid")

    service_account: dict[str, Any] | str


class WebPushCredentialIn(BaseModel):
    """A VAPID key pair's private key (PEM, or the raw 32 bytes in base64url) and the
    contact push services are given; with ``generate`` fanout makes a new pair."""

    model_config = ConfigDict(extra="forbid")

    vapid_private_key: str | None = Field(default=None, max_length=10_000)
    generate: bool = False
    subject: str = Field(max_length=500)


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[Literal["publish", "manage", "read", "admin"]] = Field(min_length=1)
    name: str = Field(default="", max_length=200)


class KeyCreated(BaseModel):
    key_id: str
    app: str
    scopes: list[str]
    name: str
    token: str = Field(description="The key itself: shown this once, never stored.")


class KeyOut(BaseModel):
    key_id: str
    app: str
    scopes: list[str]
    name: str
    created_at: datetime
    revoked_at: datetime | None


# --- Webhooks (issue #24) ---------------------------------------------------------------
WebhookKind = Literal["event.finished", "devices.retired", "devices.failed", "push.opened"]


class WebhookIn(Strict):
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="https:// on a public address (checked now and before every call).",
        examples=["https://api.example.com/fanout-hooks"],
    )
    kinds: list[WebhookKind] = Field(min_length=1, max_length=4)


class WebhookOut(BaseModel):
    id: int
    url: str
    kinds: list[str]
    state: Literal["active", "failing", "disabled"]
    created_at: datetime
    failing_since: datetime | None
    disabled_at: datetime | None


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="The whsec_ signing secret: shown this once, never again.",
    )


class WebhookDeliveryOut(BaseModel):
    id: int
    kind: str
    webhook_id: str = Field(description="The webhook-id header: the same on every try.")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_answer: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookDetail(WebhookOut):
    deliveries: list[WebhookDeliveryOut] = Field(description="The last 50, newest first.")


class WebhookTestAccepted(BaseModel):
    delivery_id: int


class WebhookReplayed(BaseModel):
    replayed: int


# ---- Sources (issue #25): subscribers read from the app's own tables ------------------------

SourcePrefixPath = Annotated[str, Path(pattern=PREFIX_PATTERN, examples=["author:"])]


class SourceIn(Strict):
    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="A read-only SELECT over the app's tables returning the subscribing "
        "users' external ids for :key, the rest of the topic's key. Checked before it is "
        "stored: it runs read-only under FANOUT_SOURCE_CHECK_TIMEOUT_SECONDS, returns the "
        "column named, and its plan has no sequential scan (422 naming `query` otherwise).",
        examples=[
            "SELECT follower_id::text AS user_id FROM books.follows WHERE author_id = :key::bigint"
        ],
    )
    column: str = Field(
        default="user_id",
        min_length=1,
        max_length=63,
        description="The column of the query holding the users' external ids.",
    )
    sample_key: str = Field(
        default="0",
        min_length=1,
        max_length=128,
        description="The :key the query is checked with (its plan and a run).",
    )


class SourceOut(BaseModel):
    prefix: str
    query: str = Field(description="As stored: :key bound as $1::text.")
    column: str
    created_at: datetime


class SourceSampleOut(BaseModel):
    prefix: str
    key: str
    users: int = Field(description="How many users the query returns for the key.")
    sample: list[str] = Field(description="The first few of them (external ids).")


PROBLEMS: dict[int | str, str] = {
    401: "Missing or unknown API key",
    403: "The key lacks the scope",
    404: "Not found",
    409: "The idempotency key was used for a different request",
    "409-cancel": "The event has already ended (delivered, failed ...): too late to cancel",
    "409-app": "An app with this key exists, or the app still owns users, events or keys",
    "409-source": "The topic's subscribers are read from a source: subscriptions are not taken",
    429: "Rate limited",
    "404-opens": "Opens are off: no FANOUT_OPEN_TOKEN_KEY or FANOUT_SECRET_KEY is set",
    503: "FANOUT_SECRET_KEY is not set: credentials cannot be stored",
    "503-webhooks": "FANOUT_SECRET_KEY is not set: webhook secrets cannot be stored",
    "503-sources": "FANOUT_SOURCE_ROLE, the role sources run as, is missing or unusable",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries for these error statuses: a Problem body each."""
    return {status: {"model": Problem, "description": PROBLEMS[status]} for status in statuses}


def app_problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The admin routes' error statuses: their 409 is about apps."""
    found = problems(*(status for status in statuses if status != 409))
    if 409 in statuses:
        found[409] = {"model": Problem, "description": PROBLEMS["409-app"]}
    return found


def subscribe_problems() -> dict[int | str, dict[str, Any]]:
    """Subscribe's error statuses: its 409 names the source the topic comes from."""
    found = problems(401, 403)
    found[409] = {"model": Problem, "description": PROBLEMS["409-source"]}
    return found


def cancel_problems() -> dict[int | str, dict[str, Any]]:
    """Cancel's error statuses: its 409 means something else than publish's."""
    found = problems(401, 403, 404)
    found[409] = {"model": Problem, "description": PROBLEMS["409-cancel"]}
    return found


# ---- Bulk import (fanout.bulk) -------------------------------------------------------------

MAX_LISTED_REJECTS = 1_000
ImportKindPath = Annotated[Literal["users", "devices", "subscriptions"], Path(examples=["devices"])]
ImportMapping = Literal["onesignal", "firebase"]


class ImportReject(BaseModel):
    line: int
    reason: str


class ImportOut(BaseModel):
    rows: int = Field(description="Lines read (blank lines aside).")
    inserted: int
    updated: int
    unchanged: int = Field(description="Rows the app already had exactly so.")
    rejected: int
    dry_run: bool
    rejects: list[ImportReject] = Field(
        description=f"The bad lines and why, the first {MAX_LISTED_REJECTS:,}."
    )
