"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver checks
with any of the specification's libraries.

A secret is ``whsec_`` + base64 of 32 random bytes; a message is signed as
``v1,`` + base64(HMAC-SHA256(secret bytes, "{webhook-id}.{webhook-timestamp}.{body}")).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix the specification gives, not a secret)
SECRET_BYTES = 32  # the specification allows 24 to 64


def new_secret() -> str:
    """A new signing secret, as shown (once) to whoever registers the endpoint."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def signature(key: bytes, *, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for this message."""
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, *, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed message, and its content type."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, webhook_id=webhook_id, timestamp=timestamp, body=body),
        "content-type": "application/json",
    }
