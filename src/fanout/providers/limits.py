"""Each provider's final payload held to that provider's limit, at publish.

A notification is rendered as each provider will send it (its kind, every locale, the
publisher's overrides merged in) and measured as that provider measures it, so an event
too large for a platform is a 422 naming the platform and the limit, never a batch whose
every push is refused once it is out of the queue.
"""

from __future__ import annotations

import orjson

from fanout.notification import Notification, RenderedNotification, render
from fanout.open_tokens import JSON_OVERHEAD
from fanout.providers import apns, fcm, webpush

# An event's collapse key is its id: 19 digits is the longest a bigint is, so the
# rendering measured is never smaller than the one sent.
_LONGEST_EVENT_ID = "9" * 19
# Each payload is measured with room for its open token (``fo_open``, 57 bytes of JSON) kept,
# whether opens are on or not: turning them on never makes a published event too large.
_TOKEN = JSON_OVERHEAD


def _measures(rendered: RenderedNotification) -> list[tuple[str, str, int, int]]:
    """(platform, what is measured, bytes, the limit) for one rendering (a Live Activity
    goes to APNs only)."""
    apns_bytes = len(orjson.dumps(apns.apns_payload(rendered)))
    if rendered.kind == "liveactivity":  # carries no open token
        return [("apns", "the APNs payload", apns_bytes, apns.MAX_PAYLOAD_BYTES)]
    measured = [
        (
            "apns",
            "the APNs payload with its open token",
            apns_bytes + _TOKEN,
            apns.MAX_PAYLOAD_BYTES,
        )
    ]
    return [
        *measured,
        ("fcm", "the FCM notification and data with the open token",
         fcm.fcm_payload_bytes(fcm.fcm_message(rendered, now=0)) + _TOKEN, fcm.MAX_PAYLOAD_BYTES),
        ("webpush", "the Web Push payload with its open token, encrypted,",
         len(orjson.dumps(webpush.webpush_payload(rendered))) + webpush.ENCRYPTION_OVERHEAD
         + _TOKEN,
         webpush.MAX_ENCRYPTED_BYTES),
    ]  # fmt: skip


# The cheap bound (``size_bound``): every byte of a platform's measured payload is either
# one of a fixed skeleton's (the keys fanout writes, its defaults, the longest collapse key,
# the open token, Web Push's encryption: under 700 bytes for every kind and platform) or a
# copy of a byte of the notification's own JSON (its fields without their defaults, encoded
# by the same orjson, so a string escapes alike), and a rendering copies each byte of it at
# most twice (a title or body said once in ``notification`` and once in an ``aps`` alert;
# a locale's text replaces the default's, an override is merged over, never beside, what it
# patches). tests/unit/test_limits.py holds the bound against the renderers on generated
# notifications.
_BOUND_FACTOR = 2
_BOUND_SKELETON = 1_024
# The smallest limit, of what each platform is measured against.
_SMALLEST_LIMIT = min(apns.MAX_PAYLOAD_BYTES, fcm.MAX_PAYLOAD_BYTES, webpush.MAX_ENCRYPTED_BYTES)


def size_bound(notification: Notification) -> int:
    """Bytes no platform's measured payload of the notification exceeds, in any locale,
    found without rendering it (a few microseconds against ~20 for rendering it for each
    platform)."""
    own = len(orjson.dumps(notification.model_dump(mode="json", exclude_defaults=True)))
    return _BOUND_FACTOR * own + _BOUND_SKELETON


def oversized_payloads(notification: Notification) -> dict[str, str]:
    """Per platform whose payload is over its limit in some locale, what to say; empty
    when every platform takes it. The largest locale is named. A notification whose
    ``size_bound`` is within every limit is not rendered: nothing of it can be over."""
    if size_bound(notification) <= _SMALLEST_LIMIT:
        return {}
    return _rendered_oversized(notification)


def _rendered_oversized(notification: Notification) -> dict[str, str]:
    worst: dict[str, tuple[int, str | None, str, int]] = {}
    for locale in [None, *notification.localized]:
        rendered = render(notification, locale, collapse_key=_LONGEST_EVENT_ID)
        for platform, what, size, limit in _measures(rendered):
            if size > limit and size > worst.get(platform, (0,))[0]:
                worst[platform] = (size, locale, what, limit)
    return {
        platform: f"{what} renders to {size} bytes (locale {locale or 'default'}); "
        f"the limit is {limit} bytes"
        for platform, (size, locale, what, limit) in worst.items()
    }
