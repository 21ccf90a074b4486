"""Sealed credentials open only under the key that sealed them, for the app and provider
they were sealed for, and as they were sealed; a rotation's keyring opens old and new."""

from __future__ import annotations

import base64

import pytest

from fanout.credentials.sealing import (
    CannotOpen,
    Keyring,
    decode_key,
    generate_key,
    kek_id,
)

PEM = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
OLD, NEW = bytes(range(32)), bytes(range(1, 33))


def test_a_sealed_credential_opens_for_its_app_and_provider() -> None:
    keyring = Keyring(OLD)
    sealed = keyring.seal(PEM, app_id=7, provider="apns")
    assert sealed.kek_id == kek_id(OLD) == keyring.kek_id
    assert keyring.open(sealed.sealed, kek_id=sealed.kek_id, app_id=7, provider="apns") == PEM


def test_nothing_of_the_secret_is_in_the_sealed_form() -> None:
    sealed = Keyring(OLD).seal(PEM, app_id=7, provider="apns").sealed
    assert PEM not in sealed and b"PRIVATE KEY" not in sealed and b"MIGHAgEA" not in sealed
    assert len(sealed) == 1 + 12 + len(PEM) + 16  # format, nonce, ciphertext, tag


def test_sealing_twice_gives_two_ciphertexts() -> None:
    """A fresh nonce each time: equal secrets are not seen to be equal at rest."""
    keyring = Keyring(OLD)
    first = keyring.seal(PEM, app_id=7, provider="apns").sealed
    assert first != keyring.seal(PEM, app_id=7, provider="apns").sealed


def test_a_ciphertext_moved_to_another_app_does_not_open() -> None:
    keyring = Keyring(OLD)
    sealed = keyring.seal(PEM, app_id=7, provider="apns")
    with pytest.raises(CannotOpen, match="apns credential of app 8"):
        keyring.open(sealed.sealed, kek_id=sealed.kek_id, app_id=8, provider="apns")


def test_a_ciphertext_moved_to_another_provider_does_not_open() -> None:
    keyring = Keyring(OLD)
    sealed = keyring.seal(PEM, app_id=7, provider="apns")
    with pytest.raises(CannotOpen, match="sealed for another app or provider"):
        keyring.open(sealed.sealed, kek_id=sealed.kek_id, app_id=7, provider="fcm")


def test_the_wrong_key_does_not_open_and_says_which_key_sealed_it() -> None:
    sealed = Keyring(OLD).seal(PEM, app_id=7, provider="apns")
    with pytest.raises(CannotOpen) as refused:
        Keyring(NEW).open(sealed.sealed, kek_id=sealed.kek_id, app_id=7, provider="apns")
    assert f"sealed under key {kek_id(OLD)}" in str(refused.value)
    assert f"the keys given are {kek_id(NEW)}" in str(refused.value)


def test_the_wrong_key_under_the_right_id_does_not_open() -> None:
    """A row whose kek_id was edited to the key at hand still fails: the tag decides."""
    sealed = Keyring(OLD).seal(PEM, app_id=7, provider="apns")
    with pytest.raises(CannotOpen, match="does not open"):
        Keyring(NEW).open(sealed.sealed, kek_id=kek_id(NEW), app_id=7, provider="apns")


@pytest.mark.parametrize("where", [0, 1, 13, -1], ids=["format", "nonce", "ciphertext", "tag"])
def test_a_tampered_ciphertext_does_not_open(where: int) -> None:
    keyring = Keyring(OLD)
    sealed = bytearray(keyring.seal(PEM, app_id=7, provider="apns").sealed)
    sealed[where] ^= 0x01
    with pytest.raises(CannotOpen):
        keyring.open(bytes(sealed), kek_id=keyring.kek_id, app_id=7, provider="apns")


def test_a_truncated_ciphertext_does_not_open() -> None:
    keyring = Keyring(OLD)
    sealed = keyring.seal(PEM, app_id=7, provider="apns").sealed
    with pytest.raises(CannotOpen, match="not in a sealed form"):
        keyring.open(sealed[:20], kek_id=keyring.kek_id, app_id=7, provider="apns")


def test_a_rotation_keyring_opens_old_and_new_and_seals_under_new() -> None:
    old = Keyring(OLD).seal(PEM, app_id=7, provider="fcm")
    rotating = Keyring(NEW, OLD)
    opened = rotating.open(old.sealed, kek_id=old.kek_id, app_id=7, provider="fcm")
    resealed = rotating.seal(opened, app_id=7, provider="fcm")
    assert resealed.kek_id == kek_id(NEW) != old.kek_id
    assert rotating.kek_ids == {kek_id(OLD), kek_id(NEW)}
    # After the rotation the new key alone opens it; the old alone no longer does.
    assert Keyring(NEW).open(resealed.sealed, kek_id=resealed.kek_id, app_id=7, provider="fcm")
    with pytest.raises(CannotOpen):
        Keyring(OLD).open(resealed.sealed, kek_id=resealed.kek_id, app_id=7, provider="fcm")


def test_a_generated_key_decodes_to_32_bytes_in_either_base64_alphabet() -> None:
    text = generate_key()
    key = decode_key(text)
    assert len(key) == 32
    assert decode_key(base64.urlsafe_b64encode(key).decode().rstrip("=")) == key
    assert decode_key(f"  {text}\n") == key


@pytest.mark.parametrize(
    "text",
    ["", "not base64!", base64.b64encode(b"x" * 16).decode(), base64.b64encode(b"x" * 33).decode()],
)
def test_a_key_that_is_not_32_bytes_of_base64_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(ValueError, match="must be 32 bytes in base64") as refused:
        decode_key(text)
    assert text == "" or text not in str(refused.value)


def test_kek_ids_tell_keys_apart_and_show_nothing_of_them() -> None:
    assert kek_id(OLD) != kek_id(NEW) and len(kek_id(OLD)) == 8
    assert kek_id(OLD) not in OLD.hex()


def test_a_keyring_never_shows_its_keys() -> None:
    keyring = Keyring(NEW, OLD)
    shown = repr(keyring)
    assert OLD.hex() not in shown and NEW.hex() not in shown
    assert base64.b64encode(NEW).decode() not in shown
    assert kek_id(NEW) in shown
