"""What a notification says, and how it is rendered for one locale.

A notification has a kind: an ``alert`` shows text; a ``background`` push shows nothing
and wakes the app with its data; a ``liveactivity`` push starts, updates or ends an iOS
Live Activity (its ``live_activity`` block, sent to the activity's APNs tokens only).
Each provider module renders each kind its own way (providers/apns.py, fcm.py,
webpush.py); the rules every provider shares (an alert has a title, a background push has
no text) are checked here, where the model is validated.

Rendering is done once per locale per batch, never per device.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import InitErrorDetails

from fanout.identifiers import LOCALE_PATTERN
from fanout.overrides import (
    ApnsOverride,
    FcmOverride,
    JsonObject,
    StringValue,
    WebPushOverride,
    json_problems,
    problem,
    raise_problems,
)

# What the push is to the device. Stored events from before kinds existed carry none and
# read as alerts. Every `match` on a kind ends in `assert_never`, so a new kind is a mypy
# error in each place that must learn it.
Kind = Literal["alert", "background", "liveactivity"]
LiveActivityEvent = Literal["start", "update", "end"]
# Apple's interruption levels (iOS 15): how far the alert may break through Focus.
# "critical" sounds through mute and needs an entitlement Apple grants per app.
InterruptionLevel = Literal["passive", "active", "time-sensitive", "critical"]
INTERRUPTION_LEVELS: tuple[InterruptionLevel, ...] = (
    "passive", "active", "time-sensitive", "critical",
)  # fmt: skip

Locale = Annotated[str, StringConstraints(pattern=LOCALE_PATTERN)]
# Text PostgreSQL can store (no NUL) and UTF-8 can encode (no lone UTF-16 surrogates,
# which JSON's \ud800 escapes can smuggle in). The pattern puts the first in the schema.
STORABLE_TEXT = r"^[^\x00]*$"


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains an unpaired UTF-16 surrogate") from None
    return value


def _text(max_length: int) -> Any:
    return StringConstraints(max_length=max_length, pattern=STORABLE_TEXT)


Encodable = AfterValidator(_encodable)
ShortText = Annotated[str, _text(1024), Encodable]
DataKey = Annotated[str, _text(128), Encodable]
DataValue = Annotated[StringValue, _text(4096), Encodable]
UrlText = Annotated[str, _text(2048), Encodable]
SoundName = Annotated[str, _text(256), Encodable]
CollapseKey = Annotated[str, _text(64), Encodable]
# Apple and Android document no limit for a thread id, a tag or a category identifier;
# 128 characters is far more than any app uses and keeps them out of the size budget.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128), _text(128), Encodable]
ActionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]
_TEXT_CONFIG = ConfigDict(extra="forbid", frozen=True)
# A notification's category, as users opt out of it and frequency caps count it: lower
# case, so that 'News' and 'news' are not two categories; '*' (every category) is not one.
CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"
Category = Annotated[str, StringConstraints(pattern=CATEGORY_PATTERN)]

# Data keys a push service keeps for itself. FCM: "from", "message_type", "google.*",
# "gcm.notification.*" (Message.data); APNs: "aps" is the payload's own dictionary, which
# a data key of that name would replace.
_RESERVED_DATA_KEYS = {
    "from": "FCM", "message_type": "FCM", "aps": "APNs",
    "fo_open": "fanout (the open token, open_tokens.py)",
}  # fmt: skip
_RESERVED_DATA_PREFIXES = {"google.": "FCM", "gcm.notification.": "FCM"}
# What only an alert shows; a background push carrying any of these is refused.
ALERT_FIELDS = (
    "title", "body", "subtitle", "localized", "url", "image", "badge", "sound", "thread_id",
    "interruption_level", "relevance_score", "action_category", "actions", "mutable_content",
)  # fmt: skip
# Apple: a background notification's aps holds content-available, and no alert, sound
# or badge (developer.apple.com, "Pushing background updates to your App").
SHOWN_APS_KEYS = ("alert", "sound", "badge")
# Chrome and Firefox show at most two actions (Notification.maxActions); Safari none.
MAX_ACTIONS = 2
# What a Live Activity push may carry besides its live_activity block: the alert Apple
# shows with it (title and body), its relevance score, priority and ttl.
LIVE_ACTIVITY_FIELDS = ("title", "body", "relevance_score")


class LocalizedText(BaseModel):
    model_config = _TEXT_CONFIG

    title: ShortText | None = None
    subtitle: ShortText | None = None
    body: ShortText | None = None


class Action(BaseModel):
    """A button on a Web Push notification, which the service worker shows."""

    model_config = _TEXT_CONFIG

    id: ActionId = Field(description="What notificationclick's event.action says.")
    title: Annotated[str, StringConstraints(min_length=1), _text(128), Encodable]
    icon: UrlText | None = None
    url: UrlText | None = Field(
        default=None, description="Opened when the button is clicked (Notification `navigate`)."
    )

    def shown(self) -> dict[str, str]:
        """The button as the Notification API's ``actions`` take it (Web Push, FCM web)."""
        shown = {"action": self.id, "title": self.title}
        if self.icon:
            shown["icon"] = self.icon
        if self.url:
            shown["navigate"] = self.url
        return shown


class LiveActivity(BaseModel):
    """What a Live Activity push says (Apple: "Starting and updating Live Activities with
    ActivityKit push notifications"): its event, the ContentState the widget shows, and
    when it goes stale or is dismissed, in UNIX seconds as Apple takes them."""

    model_config = _TEXT_CONFIG

    event: LiveActivityEvent
    content_state: JsonObject | None = Field(
        default=None, description="The activity's ContentState, as the app decodes it."
    )
    stale_date: Annotated[int, Field(ge=0)] | None = None
    dismissal_date: Annotated[int, Field(ge=0)] | None = None
    attributes_type: Identifier | None = Field(
        default=None, description="start: the ActivityAttributes type the app declares."
    )
    attributes: JsonObject | None = None
    # Set at publish, strictly increasing per activity: the device keeps the newest.
    timestamp: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _storable(self) -> LiveActivity:
        problems = []
        for name in ("content_state", "attributes"):
            value = getattr(self, name)
            problems += json_problems(value, (name,)) + _text_problems(value, (name,))
        raise_problems("LiveActivity", problems)
        return self


def _text_problems(value: Any, loc: tuple[str | int, ...]) -> list[InitErrorDetails]:
    """Strings of a JSON value (keys too) PostgreSQL can store and UTF-8 encode: no NUL,
    no lone UTF-16 surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [problem(loc, "text contains an unpaired UTF-16 surrogate")]
        return [problem(loc, "text contains a NUL character")] if "\x00" in value else []
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _text_problems(item, (*loc, i))]
    if isinstance(value, dict):
        return [
            p
            for key, item in value.items()
            for p in _text_problems(key, (*loc, key)) + _text_problems(item, (*loc, key))
        ]
    return []


class Notification(BaseModel):
    """The content of one event's push, as the publisher gave it."""

    model_config = _TEXT_CONFIG

    kind: Kind = Field(
        default="alert",
        description="alert: shows title and body. background: shows nothing, wakes the app "
        "with its data (APNs background push, FCM data message, Web Push JSON). "
        "liveactivity: a Live Activity update (POST /v1/live-activities/{id}/updates).",
    )
    title: ShortText | None = Field(default=None, description="Required for an alert.")
    subtitle: ShortText | None = None
    body: ShortText = ""
    data: dict[DataKey, DataValue] = Field(default_factory=dict)
    image: UrlText | None = None
    url: UrlText | None = Field(
        default=None, description="Deep link opened when the notification is tapped."
    )
    badge: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    sound: SoundName | None = None
    ttl: Annotated[int, Field(ge=0, le=28 * 24 * 3600)] = Field(
        default=24 * 3600, description="Seconds a provider may hold the push for an offline device."
    )
    priority: Literal["high", "normal"] = Field(
        default="high",
        description="APNs 10 or 5 (a background push is always 5), FCM Android HIGH or "
        "NORMAL, Web Push Urgency high or normal.",
    )
    collapse_key: CollapseKey | None = Field(
        default=None, description="Defaults to the event id, so a redelivered push replaces."
    )
    category: Category | None = Field(
        default=None,
        description="What kind of notification this is ('breaking-news'): users may opt out "
        "of a category, and a frequency cap may count it.",
    )
    thread_id: Identifier | None = Field(
        default=None,
        description="Groups notifications: APNs thread-id, FCM Android tag, Web Push tag.",
    )
    interruption_level: InterruptionLevel | None = Field(
        default=None,
        description="APNs: passive, active, time-sensitive, or critical (refused unless "
        "FANOUT_APNS_ALLOW_CRITICAL: Apple grants critical alerts per app).",
    )
    relevance_score: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="APNs: 0 to 1, which of the app's notifications to feature."
    )
    action_category: Identifier | None = Field(
        default=None,
        description="APNs category identifier: the action buttons the app registered.",
    )
    actions: list[Action] = Field(
        default_factory=list,
        max_length=MAX_ACTIONS,
        description="Web Push buttons the service worker shows (at most 2, as browsers).",
    )
    mutable_content: bool = Field(
        default=False,
        description="APNs mutable-content, for a notification service extension (always on "
        "with an image).",
    )
    localized: dict[Locale, LocalizedText] = Field(
        default_factory=dict,
        description="Per-locale title/subtitle/body, chosen by the device's locale.",
        # pydantic writes the key pattern as patternProperties; without this, the schema
        # would admit keys the model refuses.
        json_schema_extra={"additionalProperties": False},
    )
    apns: ApnsOverride | None = Field(
        default=None, description="Merged into the APNs request (headers, payload)."
    )
    fcm: FcmOverride | None = Field(
        default=None, description="Merged into the FCM message (android, apns, webpush)."
    )
    webpush: WebPushOverride | None = Field(
        default=None, description="Merged into the Web Push request (headers, payload)."
    )
    live_activity: LiveActivity | None = Field(
        default=None, description="A liveactivity push's event and content state."
    )

    @model_validator(mode="after")
    def _follows_its_kind(self) -> Notification:
        problems = _reserved_data_keys(self.data)
        problems += _aps_problems(self)
        if self.kind != "liveactivity" and self.live_activity is not None:
            problems.append(problem(("live_activity",), "only a liveactivity push has one"))
        if self.kind == "alert":
            if self.title is None:
                problems.append(problem(("title",), "Field required for an alert", "missing"))
        elif self.kind == "background":
            problems += _background_problems(self)
        else:
            problems += _live_activity_problems(self)
        raise_problems("Notification", problems)
        return self


def _reserved_data_keys(data: dict[str, str]) -> list[InitErrorDetails]:
    problems = []
    for key in data:
        owner = _RESERVED_DATA_KEYS.get(key) or next(
            (who for prefix, who in _RESERVED_DATA_PREFIXES.items() if key.startswith(prefix)),
            None,
        )
        if owner:
            problems.append(problem(("data", key), f"a key {owner} reserves; name it otherwise"))
    return problems


Loc = tuple[str, ...]


def _apns_blocks(notification: Notification) -> list[tuple[Loc, ApnsOverride]]:
    """The APNs overrides with where each is: the ``apns`` block, and FCM's own."""
    found: list[tuple[Loc, ApnsOverride]] = []
    if notification.apns is not None:
        found.append((("apns",), notification.apns))
    if notification.fcm is not None and notification.fcm.apns is not None:
        found.append((("fcm", "apns"), notification.fcm.apns))
    return found


def _override_aps(notification: Notification) -> list[tuple[Loc, dict[str, Any]]]:
    """Each APNs override's aps, with where it is."""
    return [
        ((*loc, "payload", "aps"), aps)
        for loc, block in _apns_blocks(notification)
        if isinstance(aps := block.payload.get("aps"), dict)
    ]


def _aps_problems(notification: Notification) -> list[InitErrorDetails]:
    """An override's interruption level and relevance score hold what Apple takes."""
    problems = []
    for loc, aps in _override_aps(notification):
        level = aps.get("interruption-level")
        if level is not None and level not in INTERRUPTION_LEVELS:
            problems.append(
                problem((*loc, "interruption-level"), f"one of {', '.join(INTERRUPTION_LEVELS)}")
            )
        score = aps.get("relevance-score")
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1
        ):
            problems.append(problem((*loc, "relevance-score"), "a number from 0 to 1"))
    return problems


def _background_problems(notification: Notification) -> list[InitErrorDetails]:
    problems = []
    for name in ALERT_FIELDS:
        default = Notification.model_fields[name].get_default(call_default_factory=True)
        if getattr(notification, name) != default:
            problems.append(
                problem((name,), "a background push shows nothing; put what the app needs in data")
            )
    for loc, block in _apns_blocks(notification):
        if block.headers.get("apns-priority") == "10":
            problems.append(
                problem(
                    (*loc, "headers", "apns-priority"),
                    "Apple refuses priority 10 for a background push: 5 or 1",
                )
            )
    for loc, aps in _override_aps(notification):
        problems += [
            problem((*loc, key), "a background push's aps holds no alert, sound or badge")
            for key in SHOWN_APS_KEYS
            if key in aps
        ]
    android = notification.fcm.android if notification.fcm is not None else None
    if android is not None and "notification" in (android.model_extra or {}):
        problems.append(
            problem(
                ("fcm", "android", "notification"),
                "a background push is an FCM data message: it has no notification",
            )
        )
    return problems


def _live_activity_problems(notification: Notification) -> list[InitErrorDetails]:
    """Apple's rules for a Live Activity push: a start names its attributes, a start or an
    update carries the content state, only an end has a dismissal date; an alert has a
    title. Nothing for the other platforms, nothing an alert alone shows."""
    problems = []
    others = (*ALERT_FIELDS, "data", "fcm", "webpush", "category", "collapse_key")
    for name in others:
        if name in LIVE_ACTIVITY_FIELDS:
            continue
        default = Notification.model_fields[name].get_default(call_default_factory=True)
        if getattr(notification, name) != default:
            problems.append(problem((name,), "a Live Activity push does not carry it"))
    if notification.body and notification.title is None:
        problems.append(problem(("title",), "Field required for an alert", "missing"))
    live = notification.live_activity
    if live is None:
        problems.append(problem(("live_activity",), "Field required", "missing"))
        return problems
    where = "live_activity"
    if live.event != "end" and live.content_state is None:
        problems.append(
            problem((where, "content_state"), f"Field required for {live.event}", "missing")
        )
    for name in ("attributes_type", "attributes"):
        if live.event == "start" and getattr(live, name) is None:
            problems.append(problem((where, name), "Field required for start", "missing"))
        if live.event != "start" and getattr(live, name) is not None:
            problems.append(problem((where, name), "only a start carries it"))
    if live.event != "end" and live.dismissal_date is not None:
        problems.append(problem((where, "dismissal_date"), "only an end is dismissed"))
    return problems


CRITICAL_NOT_ALLOWED = (
    "a critical alert sounds through mute and Focus, and needs the entitlement Apple "
    "grants per app: once the app has it, set the app's allow_critical (PATCH "
    "/v1/apps/{app}, `fanout apps settings APP --allow-critical true`), or "
    "FANOUT_APNS_ALLOW_CRITICAL=true for the apps without a setting of their own"
)


def critical_asked(notification: Notification) -> Loc | None:
    """Where the notification asks for a critical alert (the field, or an override's
    interruption level or critical sound), or None."""
    if notification.interruption_level == "critical":
        return ("interruption_level",)
    for loc, aps in _override_aps(notification):
        if aps.get("interruption-level") == "critical":
            return (*loc, "interruption-level")
        sound = aps.get("sound")
        if isinstance(sound, dict) and sound.get("critical"):
            return (*loc, "sound")
    return None


class RenderedNotification(BaseModel):
    """A notification resolved for one locale: what a provider turns into its payload."""

    model_config = ConfigDict(frozen=True)

    kind: Kind = "alert"
    title: str | None
    subtitle: str | None = None
    body: str
    data: dict[str, str]
    image: str | None
    url: str | None
    badge: int | None
    sound: str | None
    ttl: int
    priority: Literal["high", "normal"]
    collapse_key: str
    thread_id: str | None = None
    interruption_level: InterruptionLevel | None = None
    relevance_score: float | None = None
    action_category: str | None = None
    actions: tuple[Action, ...] = ()
    mutable_content: bool = False
    apns: ApnsOverride | None = None
    fcm: FcmOverride | None = None
    webpush: WebPushOverride | None = None
    live_activity: LiveActivity | None = None
    # The event whose push this is: its open tokens (``fo_open``) name it. None outside the
    # delivery stage (a size check at publish, a test): no token is minted.
    event_id: int | None = None

    def payload(self) -> dict[str, Any]:
        """The provider-neutral JSON form (what the sink receives): no platform blocks,
        nothing unset."""
        neutral = self.model_dump(mode="json", exclude_none=True, exclude=_NOT_NEUTRAL)
        if not self.actions:
            del neutral["actions"]
        if not self.mutable_content:
            del neutral["mutable_content"]
        if self.kind == "background" or (self.kind == "liveactivity" and not self.body):
            del neutral["body"]  # it has none
        return neutral


# The platform blocks, and the event (its open tokens are minted per provider).
_NOT_NEUTRAL = {"apns", "fcm", "webpush", "event_id"}


def pick_locale(available: dict[str, LocalizedText], locale: str | None) -> LocalizedText | None:
    """The variant for ``locale``: exact match, then its language, else none.

    ``pt-BR`` matches ``pt-BR`` or ``pt_BR``, then ``pt``.
    """
    if not locale or not available:
        return None
    wanted = locale.replace("_", "-").lower()
    by_norm = {key.replace("_", "-").lower(): text for key, text in available.items()}
    if wanted in by_norm:
        return by_norm[wanted]
    return by_norm.get(wanted.split("-", 1)[0])


def render(
    notification: Notification,
    locale: str | None,
    *,
    collapse_key: str,
    event_id: int | None = None,
) -> RenderedNotification:
    """Resolve the notification for a device locale; the default text fills what is missing."""
    variant = pick_locale(notification.localized, locale) or LocalizedText()
    return RenderedNotification(
        kind=notification.kind,
        title=variant.title or notification.title,
        subtitle=variant.subtitle if variant.subtitle is not None else notification.subtitle,
        body=variant.body if variant.body is not None else notification.body,
        data=notification.data,
        image=notification.image,
        url=notification.url,
        badge=notification.badge,
        sound=notification.sound,
        ttl=notification.ttl,
        priority=notification.priority,
        collapse_key=notification.collapse_key or collapse_key,
        thread_id=notification.thread_id,
        interruption_level=notification.interruption_level,
        relevance_score=notification.relevance_score,
        action_category=notification.action_category,
        actions=tuple(notification.actions),
        mutable_content=notification.mutable_content,
        apns=notification.apns,
        fcm=notification.fcm,
        webpush=notification.webpush,
        live_activity=notification.live_activity,
        event_id=event_id,
    )
