"""Devices: register (or refresh) a push token, delete one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Response

from fanout.api import schemas
from fanout.api.auth import MANAGE
from fanout.api.state import Pool
from fanout.store import find_or_create, queries

router = APIRouter()


@router.post(
    "/v1/devices",
    status_code=201,
    dependencies=[MANAGE],
    responses={
        **schemas.problems(401, 403),
        200: {"model": schemas.DeviceOut, "description": "Updated"},
    },
)
async def register_device(
    body: Annotated[schemas.DeviceIn, Body()], response: Response, pool: Pool
) -> schemas.DeviceOut:
    """Register a device, or refresh it: the same token again updates the same row."""
    if isinstance(body, schemas.WebPushDeviceIn):
        token = body.subscription.endpoint
        keys: tuple[str | None, str | None] = (
            body.subscription.keys.p256dh,
            body.subscription.keys.auth,
        )
    else:
        token, keys = body.token, (None, None)
    async with pool.acquire() as conn, conn.transaction():
        user_id = await find_or_create(conn, queries.UPSERT_USER, body.user_id)
        row = await conn.fetchrow(
            queries.UPSERT_DEVICE, user_id, body.platform, token, *keys, body.locale
        )
    if not row["created"]:
        response.status_code = 200
    return schemas.DeviceOut(id=row["id"])


@router.delete(
    "/v1/devices/{device_id}",
    status_code=204,
    dependencies=[MANAGE],
    responses=schemas.problems(401, 403, 404),
)
async def delete_device(device_id: schemas.RowIdPath, pool: Pool) -> Response:
    async with pool.acquire() as conn:
        deleted = await conn.execute(queries.DELETE_DEVICE, device_id)
    if deleted == "DELETE 0":
        raise HTTPException(404, "no such device")
    return Response(status_code=204)
