"""Apps, their push credentials and their API keys: the ``admin`` scope's routes, and the
only routes it opens.

An admin key manages every app; it sees no app's users, topics or events (those routes
need publish, manage or read, which an admin key never has). A credential is checked when
it is given (``credentials/validation.py``, a refusal names the field) and stored sealed;
no answer ever holds its private part, only what identifies it. A key's token is shown
once, when it is created.
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import orjson
import pydantic
from fastapi import APIRouter, Body, HTTPException, Response
from fastapi.exceptions import RequestValidationError

from fanout.api import schemas
from fanout.api.auth import Admin
from fanout.api.keys import check_scopes, create_api_key, revoke_api_key
from fanout.api.state import Pool, State
from fanout.credentials import validation
from fanout.credentials.stored import KEK_UNSET, keyring, store_credential
from fanout.store import api_keys, apps

router = APIRouter(tags=["apps"])

_CREDENTIAL_MODELS: dict[str, type[Any]] = {
    "apns": schemas.ApnsCredentialIn,
    "fcm": schemas.FcmCredentialIn,
    "webpush": schemas.WebPushCredentialIn,
}


async def _app(conn: asyncpg.Connection, key: str) -> apps.App:
    found = await apps.app_by_key(conn, key=key)
    if found is None:
        raise HTTPException(404, "no such app")
    return found


def _app_out(app: apps.App, credentials: list[apps.CredentialListing]) -> schemas.AppOut:
    return schemas.AppOut(
        key=app.key,
        name=app.name,
        created_at=app.created_at,
        default_throttle_per_minute=app.default_throttle_per_minute,
        allow_critical=app.allow_critical,
        credentials=[
            schemas.CredentialOut(provider=c.provider, identity=c.identity, updated_at=c.updated_at)
            for c in credentials
        ],
    )


@router.get("/v1/apps", responses=schemas.problems(401, 403))
async def list_apps(_: Admin, pool: Pool) -> list[schemas.AppListed]:
    """Every app, with the providers it has credentials for."""
    async with pool.acquire() as conn:
        found = await apps.list_apps(conn)
    return [
        schemas.AppListed(key=a.key, name=a.name, created_at=a.created_at, providers=a.providers)
        for a in found
    ]


@router.post("/v1/apps", status_code=201, responses=schemas.app_problems(401, 403, 409))
async def create_app(body: schemas.AppIn, _: Admin, pool: Pool) -> schemas.AppOut:
    """A new app, without credentials yet."""
    async with pool.acquire() as conn:
        made = await apps.insert_app(conn, key=body.key, name=body.name or body.key, settings={})
    if made is None:
        raise HTTPException(409, "key: an app with this key exists")
    return _app_out(made, [])


@router.get("/v1/apps/{app}", responses=schemas.problems(401, 403, 404))
async def get_app(app: schemas.AppPath, _: Admin, pool: Pool) -> schemas.AppOut:
    """The app and what identifies each of its credentials (never a private key)."""
    async with pool.acquire() as conn:
        found = await _app(conn, app)
        return _app_out(found, await apps.app_credentials(conn, app_id=found.id))


@router.patch("/v1/apps/{app}", responses=schemas.problems(401, 403, 404))
async def update_app(
    app: schemas.AppPath, body: schemas.AppSettingsIn, _: Admin, pool: Pool
) -> schemas.AppOut:
    """Change the app's settings: ``default_throttle_per_minute``, the pace its events take
    when their publish sets none (null: unpaced; events published before keep theirs);
    ``allow_critical``, whether it may publish critical alerts (null: the deployment's
    FANOUT_APNS_ALLOW_CRITICAL decides)."""
    async with pool.acquire() as conn:
        found = await _app(conn, app)
        if "default_throttle_per_minute" in body.model_fields_set:
            changed = await apps.set_default_throttle(
                conn, key=app, throttle_per_minute=body.default_throttle_per_minute
            )
            found = changed or found
        if "allow_critical" in body.model_fields_set:
            changed = await apps.set_allow_critical(
                conn, key=app, allow_critical=body.allow_critical
            )
            found = changed or found
        return _app_out(found, await apps.app_credentials(conn, app_id=found.id))


@router.delete(
    "/v1/apps/{app}", status_code=204, responses=schemas.app_problems(401, 403, 404, 409)
)
async def delete_app(app: schemas.AppPath, _: Admin, pool: Pool) -> Response:
    """Delete an app that owns nothing (no users, topics, events or keys) and its
    credentials; the app ``default`` is never deleted."""
    if app == apps.DEFAULT_APP:
        raise HTTPException(409, f"the app {apps.DEFAULT_APP} owns what predates apps")
    async with pool.acquire() as conn:
        try:
            deleted = await apps.delete_app(conn, key=app)
        except apps.AppInUse as exc:
            raise HTTPException(409, str(exc)) from None
    if not deleted:
        raise HTTPException(404, "no such app")
    return Response(status_code=204)


def _checked_credential(provider: str, body: dict[str, Any]) -> validation.Credential:
    """The credential in ``body``, checked; a 422 naming the field otherwise."""
    model = _CREDENTIAL_MODELS[provider]
    try:
        given = model.model_validate(body)
    except pydantic.ValidationError as exc:  # the API's 422, naming the field
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None
    try:
        if isinstance(given, schemas.ApnsCredentialIn):
            return validation.apns_credential(
                key_pem=given.key,
                key_id=given.key_id,
                team_id=given.team_id,
                bundle_id=given.bundle_id,
            )
        if isinstance(given, schemas.FcmCredentialIn):
            account = given.service_account
            text = account if isinstance(account, str) else orjson.dumps(account).decode()
            return validation.fcm_credential(service_account_json=text)
        assert isinstance(given, schemas.WebPushCredentialIn)
        if given.generate == (given.vapid_private_key is not None):
            raise validation.InvalidCredential(
                "vapid_private_key", "give a private key, or generate: true (not both)"
            )
        private = given.vapid_private_key or validation.generate_vapid_key()
        return validation.webpush_credential(vapid_private_key=private, subject=given.subject)
    except validation.InvalidCredential as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ["body", exc.field], "msg": exc.problem}]
        ) from None


@router.put(
    "/v1/apps/{app}/credentials/{provider}",
    status_code=201,
    responses={
        **schemas.problems(401, 403, 404, 503),
        200: {"model": schemas.CredentialOut, "description": "Replaced"},
    },
)
async def put_credential(
    app: schemas.AppPath,
    provider: schemas.ProviderPath,
    body: Annotated[dict[str, Any], Body()],
    response: Response,
    _: Admin,
    state: State,
) -> schemas.CredentialOut:
    """Check a credential and store it sealed as the app's for the provider, replacing any.
    The body is the provider's: APNs ``key`` (the .p8 text), ``key_id``, ``team_id``,
    ``bundle_id``; FCM ``service_account``; Web Push ``vapid_private_key`` (or
    ``generate: true``) and ``subject``. The answer is what identifies it (for Web Push,
    ``identity.public_key`` is the browser's ``applicationServerKey``), never the key."""
    credential = _checked_credential(provider, body)
    ring = keyring(state.settings)
    if ring is None:
        raise HTTPException(503, KEK_UNSET)
    async with state.pool.acquire() as conn, conn.transaction():
        found = await _app(conn, app)
        created = await store_credential(conn, app=found, credential=credential, keyring=ring)
        stored = next(
            c for c in await apps.app_credentials(conn, app_id=found.id) if c.provider == provider
        )
    if not created:
        response.status_code = 200
    return schemas.CredentialOut(
        provider=provider, identity=stored.identity, updated_at=stored.updated_at
    )


@router.delete(
    "/v1/apps/{app}/credentials/{provider}",
    status_code=204,
    responses=schemas.problems(401, 403, 404),
)
async def delete_credential(
    app: schemas.AppPath, provider: schemas.ProviderPath, _: Admin, pool: Pool
) -> Response:
    """Remove the app's credential for the provider."""
    async with pool.acquire() as conn:
        found = await _app(conn, app)
        deleted = await apps.delete_credential(conn, app_id=found.id, provider=provider)
    if not deleted:
        raise HTTPException(404, "the app has no credential for this provider")
    return Response(status_code=204)


@router.get("/v1/apps/{app}/keys", responses=schemas.problems(401, 403, 404))
async def list_keys(app: schemas.AppPath, _: Admin, pool: Pool) -> list[schemas.KeyOut]:
    """The app's API keys, live and revoked (never a secret: none is stored)."""
    async with pool.acquire() as conn:
        found = await _app(conn, app)
        keys = await api_keys.list_api_keys(conn, app_id=found.id)
    return [
        schemas.KeyOut(
            key_id=k.key_id,
            app=k.app,
            scopes=k.scopes,
            name=k.name,
            created_at=k.created_at,
            revoked_at=k.revoked_at,
        )
        for k in keys
    ]


@router.post("/v1/apps/{app}/keys", status_code=201, responses=schemas.problems(401, 403, 404))
async def create_key(
    app: schemas.AppPath, body: schemas.KeyIn, _: Admin, pool: Pool
) -> schemas.KeyCreated:
    """A new API key of the app; its token is in this answer only. ``admin`` is given
    alone (a key manages apps, or works inside one app)."""
    try:
        check_scopes(list(body.scopes), app)
    except ValueError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ["body", "scopes"], "msg": str(exc)}]
        ) from None
    async with pool.acquire() as conn:
        await _app(conn, app)
        key, token = await create_api_key(conn, list(body.scopes), body.name, app=app)
    return schemas.KeyCreated(
        key_id=key.key_id, app=key.app, scopes=sorted(key.scopes), name=key.name, token=token
    )


@router.delete(
    "/v1/apps/{app}/keys/{key_id}", status_code=204, responses=schemas.problems(401, 403, 404)
)
async def revoke_key(
    app: schemas.AppPath, key_id: schemas.KeyIdPath, _: Admin, pool: Pool
) -> Response:
    """Revoke one of the app's keys at once."""
    async with pool.acquire() as conn:
        found = await _app(conn, app)
        revoked = await revoke_api_key(conn, key_id, app_id=found.id)
    if not revoked:
        raise HTTPException(404, "no such live key in this app")
    return Response(status_code=204)
