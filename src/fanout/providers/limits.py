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


def oversized_payloads(notification: Notification) -> dict[str, str]:
    """Per platform whose payload is over its limit in some locale, what to say; empty
    when every platform takes it. The largest locale is named."""
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
