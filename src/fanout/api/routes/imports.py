"""Bulk import over HTTP: the body is NDJSON, read as it arrives (never held whole), and
goes through the same chunks as `fanout import` (fanout.bulk.load)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from fanout.api import schemas
from fanout.api.auth import Manager
from fanout.api.state import Pool

router = APIRouter()

_NDJSON_BODY = {
    "requestBody": {
        "required": True,
        "description": "One JSON object per line, in the columns `fanout export` writes "
        "(or those of --mapping's service); Content-Encoding: gzip accepted.",
        "content": {
            "application/x-ndjson": {
                "schema": {"type": "string"},
                "example": '{"user_id": "reader-7", "platform": "fcm", "token": "f0..."}\n',
            }
        },
    }
}


@router.post(
    "/v1/imports/{kind}",
    responses=schemas.problems(401, 403),
    openapi_extra=_NDJSON_BODY,
)
async def import_bulk(
    kind: schemas.ImportKindPath,
    request: Request,
    key: Manager,
    pool: Pool,
    mapping: Annotated[schemas.ImportMapping | None, Query()] = None,
    dry_run: Annotated[bool, Query()] = False,
) -> schemas.ImportOut:
    """Import users, devices or subscriptions into this key's app: every good line lands
    (COPY into a staging table, one statement per chunk), the same body twice changes
    nothing, and each bad line is answered with its number and reason. A device's or
    subscription's user must exist in the app (import users first)."""
    # Here, not at the top: fanout.bulk checks rows with api/schemas.py's models, and
    # importing fanout.api from there (the CLI's way in) builds the app and its routes.
    from fanout.bulk.load import import_rows
    from fanout.bulk.readers import ndjson_body_records

    rejects: list[schemas.ImportReject] = []

    def on_reject(line: int, reason: str) -> None:
        if len(rejects) < schemas.MAX_LISTED_REJECTS:
            rejects.append(schemas.ImportReject(line=line, reason=reason))

    gzipped = request.headers.get("content-encoding", "").lower() == "gzip"
    async with pool.acquire() as conn:
        counts = await import_rows(
            conn,
            kind=kind,
            app_id=key.app_id,
            numbered=ndjson_body_records(request.stream(), gzipped=gzipped),
            mapping=mapping,
            dry_run=dry_run,
            on_reject=on_reject,
        )
    rejects.sort(key=lambda r: r.line)
    return schemas.ImportOut(**counts.as_dict(), rejects=rejects)
