"""``fo_open``: the per-device open token every push carries, and its check.

A token is ``01 | event id (8) | device id (8) | HMAC-SHA256(key, the 17 bytes before)[:16]``
in base64url without padding: 44 characters. The app posts it back to ``POST /v1/opens``
when the user opens the push; the token is the credential (no API key on a phone), and it is
verified with the key alone, no lookup: a forged token, or one whose event or device was
altered, fails its MAC. 128 bits of MAC leave a forger one chance in 2^128 per try, and the
route is rate limited per address besides.

The key is ``FANOUT_OPEN_TOKEN_KEY``, or derived from ``FANOUT_SECRET_KEY`` with HKDF (its
own ``info``, so the token key says nothing of the key that seals credentials). Neither set:
opens are off, pushes carry no ``fo_open`` and the route answers 404.

On the delivery path a token is minted per device: the HMAC's key schedule and the 9 bytes
of the event are hashed once per batch (``OpenTokens.for_event``), and each device costs a
copy of that state, 8 bytes more and a base64 encoding (bench/providers.py --open-tokens).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fanout.errors import FanoutError

DATA_KEY = "fo_open"  # the key the token travels under in every push's data
VERSION = 1
_HEAD = struct.Struct(">BQ")  # version, event id
_DEVICE = struct.Struct(">Q")
MAC_BYTES = 16
TOKEN_BYTES = _HEAD.size + _DEVICE.size + MAC_BYTES  # 33
TOKEN_CHARS = 44  # base64url of 33 bytes, unpadded
# What the token adds to a JSON object's bytes at most: `,"fo_open":"<44>"` (the size checks
# at publish reserve it, providers/limits.py).
JSON_OVERHEAD = len(f',"{DATA_KEY}":""') + TOKEN_CHARS
_HKDF_INFO = b"fanout open tokens v1"
_MAX_ID = 2**63 - 1  # PostgreSQL's bigint


def with_token(payload: bytes, token: str) -> bytes:
    """A rendered JSON object (``{...}``, as orjson wrote it) with ``fo_open`` added at its
    top level: a splice of bytes, not a parse and a dump per device."""
    if payload == b"{}":
        return b'{"' + DATA_KEY.encode() + b'":"' + token.encode() + b'"}'
    return payload[:-1] + b',"' + DATA_KEY.encode() + b'":"' + token.encode() + b'"}'


class InvalidOpenToken(FanoutError):
    """Not a token fanout minted with this key: malformed, forged or altered."""


@dataclass(frozen=True, slots=True)
class OpenToken:
    event_id: int
    device_id: int


def derive_key(secret_key: bytes) -> bytes:
    """The token key from FANOUT_SECRET_KEY (32 bytes): HKDF-SHA256 with fanout's info."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret_key)


class EventTokens:
    """Mints the tokens of one event: the HMAC state over its head, copied per device."""

    __slots__ = ("_head", "_state")

    def __init__(self, state: hmac.HMAC, head: bytes) -> None:
        self._state = state
        self._head = head

    def token(self, device_id: int) -> str:
        device = _DEVICE.pack(device_id)
        mac = self._state.copy()
        mac.update(device)
        body = self._head + device + mac.digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(body)[:TOKEN_CHARS].decode("ascii")


class OpenTokens:
    """Mints and verifies ``fo_open`` tokens under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("an open token key must be at least 16 bytes")
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def for_event(self, event_id: int) -> EventTokens:
        head = _HEAD.pack(VERSION, event_id)
        state = self._base.copy()
        state.update(head)
        return EventTokens(state, head)

    def token(self, event_id: int, device_id: int) -> str:
        return self.for_event(event_id).token(device_id)

    def verify(self, token: str) -> OpenToken:
        """The event and device the token was minted for; ``InvalidOpenToken`` unless this
        key minted it exactly so (the MAC is compared in constant time)."""
        if not isinstance(token, str) or len(token) != TOKEN_CHARS:
            raise InvalidOpenToken("not an open token")
        try:
            body = base64.urlsafe_b64decode(token + "=")
        except (binascii.Error, ValueError):
            raise InvalidOpenToken("not an open token") from None
        if len(body) != TOKEN_BYTES or base64.urlsafe_b64encode(body)[:TOKEN_CHARS] != (
            token.encode("ascii", errors="replace")
        ):
            raise InvalidOpenToken("not an open token")  # non-canonical spellings too
        version, event_id = _HEAD.unpack_from(body)
        (device_id,) = _DEVICE.unpack_from(body, _HEAD.size)
        signed = body[:-MAC_BYTES]
        mac = self._base.copy()
        mac.update(signed)
        if not hmac.compare_digest(mac.digest()[:MAC_BYTES], body[-MAC_BYTES:]):
            raise InvalidOpenToken("not an open token")
        if version != VERSION or event_id > _MAX_ID or device_id > _MAX_ID:
            raise InvalidOpenToken("not an open token")
        return OpenToken(event_id=event_id, device_id=device_id)
