"""Devices: register (or refresh) a push token, delete one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Response

from fanout.api import schemas
from fanout.api.auth import Manager
from fanout.api.state import Pool
from fanout.store import devices, subscriptions

router = APIRouter()


@router.post(
    "/v1/devices",
    status_code=201,
    responses={
        **schemas.problems(401, 403),
        200: {"model": schemas.DeviceOut, "description": "Updated"},
    },
)
async def register_device(
    body: Annotated[schemas.DeviceIn, Body()], response: Response, key: Manager, pool: Pool
) -> schemas.DeviceOut:
    """Register a device, or refresh it: the same token again (in this key's app) updates
    the same row."""
    if isinstance(body, schemas.WebPushDeviceIn):
        token = body.subscription.endpoint
        p256dh: str | None = body.subscription.keys.p256dh
        auth: str | None = body.subscription.keys.auth
    else:
        token, p256dh, auth = body.token, None, None
    sandbox = isinstance(body, schemas.ApnsDeviceIn) and body.apns_environment == "sandbox"
    async with pool.acquire() as conn, conn.transaction():
        user_id = await subscriptions.find_or_create_user(
            conn, app_id=key.app_id, user=body.user_id
        )
        device = await devices.upsert_device(
            conn,
            app_id=key.app_id,
            user_id=user_id,
            platform=body.platform,
            token=token,
            web_push_p256dh=p256dh,
            web_push_auth=auth,
            locale=body.locale,
            apns_sandbox=sandbox,
        )
    if not device.created:
        response.status_code = 200
    return schemas.DeviceOut(id=device.id)


@router.delete(
    "/v1/devices/{device_id}",
    status_code=204,
    responses=schemas.problems(401, 403, 404),
)
async def delete_device(device_id: schemas.RowIdPath, key: Manager, pool: Pool) -> Response:
    async with pool.acquire() as conn:
        deleted = await devices.delete_device(conn, app_id=key.app_id, device_id=device_id)
    if not deleted:
        raise HTTPException(404, "no such device")
    return Response(status_code=204)
