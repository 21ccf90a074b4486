"""Registering an endpoint, as the API and the CLI both do: its URL checked, a secret made
and sealed; the secret is returned once, to be shown once."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from fanout.config import ConfigError
from fanout.credentials.sealing import Keyring
from fanout.errors import FanoutError
from fanout.store import webhooks
from fanout.webhooks import addresses, signing

KEK_UNSET_FOR_WEBHOOKS = (
    "FANOUT_SECRET_KEY is not set: webhook signing secrets are stored sealed under it "
    "(`fanout secrets generate-key` makes one)"
)


class UnknownKind(FanoutError, ValueError):
    """A kind no endpoint can subscribe to."""


def checked_kinds(kinds: Sequence[str]) -> list[str]:
    """The kinds, each once, in the order given; ``UnknownKind`` naming one unknown."""
    if not kinds:
        raise UnknownKind(f"give at least one of {', '.join(webhooks.KINDS)}")
    for kind in kinds:
        if kind not in webhooks.KINDS:
            raise UnknownKind(f"{kind!r} is not one of {', '.join(webhooks.KINDS)}")
    return list(dict.fromkeys(kinds))


async def register(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    url: str,
    kinds: Sequence[str],
    keyring: Keyring | None,
    resolver: addresses.Resolver,
    allow_private: bool,
) -> tuple[webhooks.Endpoint, str]:
    """The endpoint registered and its ``whsec_`` secret (to show once). ``ConfigError``
    without FANOUT_SECRET_KEY, ``RefusedAddress`` for a URL fanout will not call,
    ``UnknownKind`` for a kind it does not send."""
    chosen = checked_kinds(kinds)
    await addresses.check_url(url, resolver=resolver, allow_private=allow_private)
    if keyring is None:
        raise ConfigError(KEK_UNSET_FOR_WEBHOOKS)
    secret = signing.new_secret()
    sealed = keyring.seal(secret.encode(), app_id=app_id, provider=webhooks.SEALED_FOR)
    endpoint = await webhooks.insert_endpoint(
        conn,
        app_id=app_id,
        url=url,
        kinds=chosen,
        secret_sealed=sealed.sealed,
        kek_id=sealed.kek_id,
    )
    return endpoint, secret
