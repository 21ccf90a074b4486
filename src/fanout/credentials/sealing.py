"""Secrets at rest: AES-256-GCM under a key-encryption key (KEK, ``FANOUT_SECRET_KEY``).

A sealed credential is ``01 | nonce (12) | ciphertext | tag (16)``, stored with the short
id of the key that sealed it. The app id and the provider are the associated data: the
ciphertext of one app's APNs key, copied into another app's row (or into the same app's
FCM row), fails to open rather than sending as the wrong app.

The KEK encrypts the credentials directly, not per-row data keys it wraps: a deployment
holds one row per app and provider (thousands at most, a few KB each), and a rotation
rewrites every row either way. Nonces are random: NIST SP 800-38D allows 2^32 messages
per key that way, and a KEK seals one message per credential set or rotated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fanout.errors import FanoutError

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
_FORMAT = b"\x01"  # the layout above; a later one gets another first byte
_INVALID_KEY = "must be 32 bytes in base64 (`fanout secrets generate-key` makes one)"


class CannotOpen(FanoutError):
    """A sealed credential that none of the keys given opens: sealed under another key,
    altered, or moved from another app's row. The message names the credential and the
    key ids, never a key."""


def decode_key(text: str) -> bytes:
    """A KEK from its base64 text (standard or URL-safe alphabet, padded or not);
    ``ValueError`` saying what is expected, never echoing the text."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(_INVALID_KEY) from None
    if len(key) != KEY_BYTES:
        raise ValueError(_INVALID_KEY)
    return key


def generate_key() -> str:
    """A new KEK, as the base64 text ``FANOUT_SECRET_KEY`` takes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def kek_id(key: bytes) -> str:
    """8 hex digits that tell keys apart (which key sealed a row) and reveal nothing of
    the key: a domain-separated SHA-256, of which 32 bits are kept."""
    return hashlib.sha256(b"fanout kek id\x00" + key).hexdigest()[:8]


def _associated_data(app_id: int, provider: str) -> bytes:
    return b"fanout credential\x00%d\x00%s" % (app_id, provider.encode())


@dataclass(frozen=True, slots=True)
class Sealed:
    """A credential's private part as it is stored, and the id of the key that sealed it."""

    sealed: bytes
    kek_id: str


class Keyring:
    """Seals with one key; opens with it or any other given (a rotation's old key).

    The key bytes are held privately and never appear in ``repr`` or any message.
    """

    def __init__(self, sealing_key: bytes, *other_keys: bytes) -> None:
        for key in (sealing_key, *other_keys):
            if len(key) != KEY_BYTES:
                raise ValueError(f"a key-encryption key is {KEY_BYTES} bytes")
        self.kek_id = kek_id(sealing_key)
        self._sealing = AESGCM(sealing_key)
        self._opening = {kek_id(key): AESGCM(key) for key in (*other_keys, sealing_key)}

    @classmethod
    def from_base64(cls, sealing_key: str, *other_keys: str) -> Keyring:
        return cls(decode_key(sealing_key), *(decode_key(key) for key in other_keys))

    def __repr__(self) -> str:
        return f"Keyring(seals with {self.kek_id}, opens {', '.join(sorted(self._opening))})"

    @property
    def kek_ids(self) -> frozenset[str]:
        """The ids of every key this keyring opens with."""
        return frozenset(self._opening)

    def seal(self, plaintext: bytes, *, app_id: int, provider: str) -> Sealed:
        """The private part sealed for this app and provider, under the sealing key."""
        nonce = os.urandom(NONCE_BYTES)
        box = self._sealing.encrypt(nonce, plaintext, _associated_data(app_id, provider))
        return Sealed(_FORMAT + nonce + box, self.kek_id)

    def open(self, sealed: bytes, *, kek_id: str, app_id: int, provider: str) -> bytes:
        """The private part sealed for this app and provider; ``CannotOpen`` if no key
        here sealed it, or it was altered or sealed for another app or provider."""
        where = f"the {provider} credential of app {app_id}"
        aead = self._opening.get(kek_id)
        if aead is None:
            known = ", ".join(sorted(self._opening))
            raise CannotOpen(f"{where} is sealed under key {kek_id}; the keys given are {known}")
        if sealed[:1] != _FORMAT or len(sealed) < 1 + NONCE_BYTES + 16:
            raise CannotOpen(f"{where} is not in a sealed form fanout knows")
        nonce, box = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return aead.decrypt(nonce, box, _associated_data(app_id, provider))
        except InvalidTag:
            raise CannotOpen(
                f"{where} does not open under key {kek_id}: altered, or sealed for another "
                "app or provider"
            ) from None
