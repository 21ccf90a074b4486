"""Apps' credentials as PostgreSQL keeps them: sealed on the way in, opened on the way out,
resealed under a new key by a rotation, and the start-up check that the key is there.

The rows are ``store.apps``'; the sealing is ``sealing``. Nothing here logs, prints or
raises with a private key in it: messages name the app, the provider and key ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from fanout.config import ConfigError, Settings
from fanout.credentials.sealing import CannotOpen, Keyring
from fanout.credentials.validation import Credential, settings_credentials
from fanout.store import apps, webhooks

KEK_UNSET = (
    "FANOUT_SECRET_KEY is not set: app credentials are stored sealed under it "
    "(`fanout secrets generate-key` makes one)"
)


def keyring(settings: Settings) -> Keyring | None:
    """The keyring of FANOUT_SECRET_KEY (opening also with FANOUT_PREVIOUS_SECRET_KEYS), or
    None when it is not set."""
    if settings.secret_key is None:
        return None
    return Keyring.from_base64(settings.secret_key.get_secret_value(), *settings.previous_keys())


def required_keyring(settings: Settings) -> Keyring:
    """The keyring of FANOUT_SECRET_KEY; ``ConfigError`` naming it when it is not set."""
    found = keyring(settings)
    if found is None:
        raise ConfigError(KEK_UNSET)
    return found


async def store_credential(
    conn: asyncpg.Connection, *, app: apps.App, credential: Credential, keyring: Keyring
) -> bool:
    """Seal the checked credential for this app and store it, replacing the app's credential
    for that provider; True if it had none."""
    sealed = keyring.seal(credential.secret, app_id=app.id, provider=credential.provider)
    return await apps.upsert_credential(
        conn,
        app_id=app.id,
        provider=credential.provider,
        sealed=sealed.sealed,
        kek_id=sealed.kek_id,
        identity=credential.identity,
    )


async def open_credential(
    conn: asyncpg.Connection, *, app_id: int, provider: str, keyring: Keyring
) -> bytes | None:
    """The private part of the app's credential for the provider, opened; None if it has
    none. ``CannotOpen`` if no key of the keyring sealed it (or it was moved or altered)."""
    row = await apps.sealed_credential(conn, app_id=app_id, provider=provider)
    if row is None:
        return None
    return keyring.open(row.sealed, kek_id=row.kek_id, app_id=app_id, provider=provider)


async def import_settings_credentials(
    conn: asyncpg.Connection,
    *,
    app: apps.App,
    settings: Settings,
    keyring: Keyring,
    replace: bool,
) -> dict[str, str]:
    """Store the credentials the FANOUT_APNS_*, _FCM_* and _VAPID_* settings hold as the
    app's, checked as any credential is (``ConfigError`` naming the variable). By provider:
    'stored', 'replaced', or 'kept' (the app had one and ``replace`` is false)."""
    found = settings_credentials(settings)
    existing = {c.provider for c in await apps.app_credentials(conn, app_id=app.id)}
    done: dict[str, str] = {}
    for provider, credential in found.items():
        if provider in existing and not replace:
            done[provider] = "kept"
            continue
        created = await store_credential(conn, app=app, credential=credential, keyring=keyring)
        done[provider] = "stored" if created else "replaced"
    return done


@dataclass(slots=True)
class Rotation:
    """What a rotation did: rows resealed under the new key, rows it found there already,
    and those no key given opens (by message: app, provider, kek id)."""

    resealed: int = 0
    already: int = 0
    failed: list[str] = field(default_factory=list)


async def rotate(conn: asyncpg.Connection, *, keyring: Keyring) -> Rotation:
    """Reseal every stored credential under the keyring's sealing key, opening each with
    any of its keys. One row at a time, each in its own short transaction with its row
    locked: nothing else waits longer than one row, a credential set meanwhile is not lost,
    and a rotation stopped half-way is finished by running it again (rows already under
    the new key are skipped)."""
    done = Rotation()
    for ref in await apps.credential_refs(conn):
        if ref.kek_id == keyring.kek_id:
            done.already += 1
            continue
        async with conn.transaction():
            row = await apps.lock_sealed_credential(conn, app_id=ref.app_id, provider=ref.provider)
            if row is None:  # removed since the list was read
                continue
            if row.kek_id == keyring.kek_id:  # set again under the new key meanwhile
                done.already += 1
                continue
            try:
                plaintext = keyring.open(
                    row.sealed, kek_id=row.kek_id, app_id=row.app_id, provider=row.provider
                )
            except CannotOpen as exc:
                done.failed.append(str(exc))
                continue
            sealed = keyring.seal(plaintext, app_id=row.app_id, provider=row.provider)
            await apps.reseal_credential(
                conn,
                app_id=row.app_id,
                provider=row.provider,
                sealed=sealed.sealed,
                kek_id=sealed.kek_id,
            )
            done.resealed += 1
    await _rotate_webhook_secrets(conn, keyring=keyring, done=done)
    return done


async def _rotate_webhook_secrets(
    conn: asyncpg.Connection, *, keyring: Keyring, done: Rotation
) -> None:
    """The webhooks' signing secrets, resealed as the credentials are (counted with them)."""
    purpose = webhooks.SEALED_FOR
    for ref in await webhooks.secret_refs(conn):
        if ref.kek_id == keyring.kek_id:
            done.already += 1
            continue
        async with conn.transaction():
            row = await webhooks.lock_secret(conn, endpoint_id=ref.id)
            if row is None:
                continue
            if row.kek_id == keyring.kek_id:
                done.already += 1
                continue
            try:
                plaintext = keyring.open(
                    row.secret_sealed, kek_id=row.kek_id, app_id=row.app_id, provider=purpose
                )
            except CannotOpen as exc:
                done.failed.append(f"webhook {row.id}: {exc}")
                continue
            sealed = keyring.seal(plaintext, app_id=row.app_id, provider=purpose)
            await webhooks.reseal_secret(
                conn, endpoint_id=row.id, sealed=sealed.sealed, kek_id=sealed.kek_id
            )
            done.resealed += 1


async def check_secret_key(conn: asyncpg.Connection, *, settings: Settings) -> None:
    """At start-up: ``ConfigError`` naming FANOUT_SECRET_KEY if credentials are stored
    sealed and it is not set, or it is set to a key that did not seal some of them."""
    try:
        sealed_by = await apps.sealed_by_kek(conn)
    except asyncpg.UndefinedTableError:  # before `fanout migrate`: nothing is sealed
        return
    try:  # the webhooks' signing secrets are sealed too (schema 16)
        for kek, count in (await webhooks.secrets_by_kek(conn)).items():
            sealed_by[kek] = sealed_by.get(kek, 0) + count
    except asyncpg.UndefinedTableError:
        pass
    if not sealed_by:
        return
    ids = ", ".join(sorted(sealed_by))
    found = keyring(settings)
    if found is None:
        raise ConfigError(
            f"FANOUT_SECRET_KEY is not set, but {sum(sealed_by.values())} app credential(s) "
            f"are stored sealed under key {ids}: set it to that key"
        )
    unopened = {kek: count for kek, count in sealed_by.items() if kek not in found.kek_ids}
    if unopened:
        raise ConfigError(
            f"FANOUT_SECRET_KEY (key {found.kek_id}) did not seal {sum(unopened.values())} "
            f"of the stored app credentials (sealed under key {', '.join(sorted(unopened))}): "
            "set the key they were sealed with, or finish `fanout secrets rotate`"
        )
