"""An open token names its event and device, is verified with the key alone, and nothing
but that key mints one that passes: forged, altered and other keys' tokens are refused."""

from __future__ import annotations

import base64

import pytest

from fanout.config import Settings
from fanout.open_tokens import (
    JSON_OVERHEAD,
    TOKEN_CHARS,
    InvalidOpenToken,
    OpenToken,
    OpenTokens,
    derive_key,
)

KEY = b"k" * 32


def _tamper(token: str, at: int) -> str:
    body = bytearray(base64.urlsafe_b64decode(token + "="))
    body[at] ^= 0x01
    return base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")


def test_a_token_verifies_to_its_event_and_device() -> None:
    tokens = OpenTokens(KEY)
    token = tokens.token(event_id=42, device_id=7_000_000_001)
    assert len(token) == TOKEN_CHARS
    assert tokens.verify(token) == OpenToken(event_id=42, device_id=7_000_000_001)


def test_an_events_minter_gives_the_same_tokens_as_one_at_a_time() -> None:
    tokens = OpenTokens(KEY)
    minter = tokens.for_event(9)
    assert [minter.token(d) for d in range(5)] == [tokens.token(9, d) for d in range(5)]
    assert len({minter.token(d) for d in range(1000)}) == 1000


def test_a_forged_token_is_refused() -> None:
    """Right shape, made up MAC: what a guesser sends."""
    tokens = OpenTokens(KEY)
    forged = base64.urlsafe_b64encode(bytes([1]) + (42).to_bytes(8) + (7).to_bytes(8) + bytes(16))
    with pytest.raises(InvalidOpenToken):
        tokens.verify(forged.decode().rstrip("="))


def test_another_events_token_is_refused() -> None:
    """A genuine token with its event id changed to another event's: the MAC fails."""
    tokens = OpenTokens(KEY)
    token = tokens.token(event_id=42, device_id=7)
    other_event = base64.urlsafe_b64decode(token + "=")
    altered = bytearray(other_event)
    altered[1:9] = (43).to_bytes(8)
    with pytest.raises(InvalidOpenToken):
        tokens.verify(base64.urlsafe_b64encode(bytes(altered)).decode().rstrip("="))
    assert tokens.verify(tokens.token(43, 7)).event_id == 43  # that event's own token passes


@pytest.mark.parametrize("at", [0, 1, 8, 9, 16, 17, 32])
def test_any_altered_byte_is_refused(at: int) -> None:
    tokens = OpenTokens(KEY)
    with pytest.raises(InvalidOpenToken):
        tokens.verify(_tamper(tokens.token(42, 7), at))


def test_another_keys_token_is_refused() -> None:
    with pytest.raises(InvalidOpenToken):
        OpenTokens(KEY).verify(OpenTokens(b"x" * 32).token(42, 7))


@pytest.mark.parametrize(
    "bad", ["", "x", "!" * TOKEN_CHARS, "A" * (TOKEN_CHARS + 1), "é" * TOKEN_CHARS]
)
def test_malformed_tokens_are_refused(bad: str) -> None:
    with pytest.raises(InvalidOpenToken):
        OpenTokens(KEY).verify(bad)


def test_the_json_overhead_is_what_the_token_adds() -> None:
    token = OpenTokens(KEY).token(2**63 - 1, 2**63 - 1)
    assert len(f',"fo_open":"{token}"') == JSON_OVERHEAD


def test_opens_are_off_without_a_key_and_derived_from_the_secret_key() -> None:
    assert Settings(secret_key=None, open_token_key=None).open_tokens() is None
    secret = base64.b64encode(bytes(range(32))).decode()
    derived = Settings(secret_key=secret).open_tokens()
    assert derived is not None
    assert OpenTokens(derive_key(bytes(range(32)))).verify(derived.token(1, 2)).device_id == 2
    assert derive_key(bytes(range(32))) != bytes(range(32))
    explicit = Settings(open_token_key="o" * 32, secret_key=secret).open_tokens()
    assert explicit is not None
    with pytest.raises(InvalidOpenToken):
        explicit.verify(derived.token(1, 2))


def test_a_short_open_token_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match=r"open_token_key") as caught:
        Settings(open_token_key="secretsecret")
    assert "secretsecret" not in str(caught.value)


@pytest.mark.parametrize("platform", ["apns", "webpush"])
def test_a_publisher_cannot_set_its_own_fo_open(platform: str) -> None:
    from pydantic import ValidationError

    from fanout.notification import Notification

    with pytest.raises(ValidationError, match="fo_open"):
        Notification.model_validate({"title": "t", platform: {"payload": {"fo_open": "x"}}})
    with pytest.raises(ValidationError, match="fo_open"):
        Notification.model_validate({"title": "t", "data": {"fo_open": "x"}})
