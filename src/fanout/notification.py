"""What a notification says, and how it is rendered for one locale.

Rendering is done once per locale per batch, never per device.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from fanout.config import MAX_PAYLOAD_BYTES

Locale = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")]
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
DataValue = Annotated[str, _text(4096), Encodable]
UrlText = Annotated[str, _text(2048), Encodable]
SoundName = Annotated[str, _text(256), Encodable]
CollapseKey = Annotated[str, _text(64), Encodable]
_TEXT_CONFIG = ConfigDict(extra="forbid", frozen=True)
# A notification's kind, as users opt out of it and frequency caps count it: lower case,
# so that 'News' and 'news' are not two categories; '*' (every category) is not one.
CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"
Category = Annotated[str, StringConstraints(pattern=CATEGORY_PATTERN)]


class LocalizedText(BaseModel):
    model_config = _TEXT_CONFIG

    title: ShortText | None = None
    body: ShortText | None = None


class Notification(BaseModel):
    """The content of one event's push, as the publisher gave it."""

    model_config = _TEXT_CONFIG

    title: ShortText
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
    priority: Literal["high", "normal"] = "high"
    collapse_key: CollapseKey | None = Field(
        default=None, description="Defaults to the event id, so a redelivered push replaces."
    )
    category: Category | None = Field(
        default=None,
        description="What kind of notification this is ('breaking-news'): users may opt out "
        "of a category, and a frequency cap may count it.",
    )
    localized: dict[Locale, LocalizedText] = Field(
        default_factory=dict,
        description="Per-locale title/body, chosen by the device's locale.",
        # pydantic writes the key pattern as patternProperties; without this, the schema
        # would admit keys the model refuses.
        json_schema_extra={"additionalProperties": False},
    )

    @model_validator(mode="after")
    def _fits_every_provider(self) -> Notification:
        # The largest rendering (longest locale variant) must fit Apple's 4 KB limit.
        for locale in [None, *self.localized]:
            size = len(orjson.dumps(render(self, locale, collapse_key="0" * 20).payload()))
            if size > MAX_PAYLOAD_BYTES:
                raise ValueError(
                    f"notification renders to {size} bytes for locale {locale or 'default'}; "
                    f"the limit is {MAX_PAYLOAD_BYTES}"
                )
        return self


class RenderedNotification(BaseModel):
    """A notification resolved for one locale: what a provider turns into its payload."""

    model_config = ConfigDict(frozen=True)

    title: str
    body: str
    data: dict[str, str]
    image: str | None
    url: str | None
    badge: int | None
    sound: str | None
    ttl: int
    priority: Literal["high", "normal"]
    collapse_key: str

    def payload(self) -> dict[str, Any]:
        """The provider-neutral JSON form (what the sink receives)."""
        return self.model_dump(exclude_none=True)


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
    notification: Notification, locale: str | None, *, collapse_key: str
) -> RenderedNotification:
    """Resolve the notification for a device locale; the default text fills what is missing."""
    variant = pick_locale(notification.localized, locale)
    title = (variant.title if variant and variant.title is not None else None) or notification.title
    body = variant.body if variant and variant.body is not None else notification.body
    return RenderedNotification(
        title=title,
        body=body,
        data=notification.data,
        image=notification.image,
        url=notification.url,
        badge=notification.badge,
        sound=notification.sound,
        ttl=notification.ttl,
        priority=notification.priority,
        collapse_key=notification.collapse_key or collapse_key,
    )
