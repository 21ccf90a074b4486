"""Opens and clicks reported by the apps: no API key, the ``fo_open`` token is the credential."""

from __future__ import annotations

import math
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError

from fanout.api import schemas
from fanout.api.state import ApiState, State
from fanout.open_tokens import InvalidOpenToken
from fanout.ratelimit import TokenBucket
from fanout.stages.opens import record_open

router = APIRouter()

SERVICE_WORKER = Path(__file__).parent.parent / "sdk" / "fanout-sw.js"
# A browser's service worker posts from the site's origin, not fanout's: POST /v1/opens
# answers any origin (it takes no cookie and no key: the token is the credential).
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "content-type",
    "Access-Control-Max-Age": "86400",
}

# Addresses whose buckets are kept; past it the least recently seen is forgotten (it starts
# again full, which errs towards letting a phone report).
OPEN_BUCKETS_MAX = 100_000
OPENS_OFF = (
    "opens are off on this server: set FANOUT_OPEN_TOKEN_KEY (or FANOUT_SECRET_KEY) "
    "to sign open tokens"
)


@router.post(
    "/v1/opens",
    status_code=202,
    responses={
        **schemas.problems(429),
        404: {"model": schemas.Problem, "description": schemas.PROBLEMS["404-opens"]},
    },
)
async def report_open(
    body: schemas.OpenIn, request: Request, response: Response, state: State
) -> schemas.OpenAccepted:
    """An app reports that the user opened a push, or clicked one of its actions, with the
    push's ``fo_open`` token. A token counts once (posting it again changes nothing); an
    action is recorded once per device. A token this server did not mint is a 422; any
    other is answered 202 alike, counted or not (its event gone or past the open window).
    Rate limited per client address (FANOUT_OPENS_PER_MINUTE_PER_ADDRESS)."""
    response.headers.update(CORS)
    tokens = state.open_tokens
    if tokens is None:
        raise HTTPException(404, OPENS_OFF, headers=CORS)
    _take_from_bucket(state, request.client.host if request.client else "")
    settings = state.settings
    try:
        await record_open(
            state.pool,
            tokens,
            body.token,
            action=body.action,
            opened_at=body.opened_at,
            window_seconds=settings.open_window_days * 86400.0,
        )
    except InvalidOpenToken:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ["body", "token"], "msg": "not an open token"}]
        ) from None
    return schemas.OpenAccepted(accepted=True)


def _take_from_bucket(state: ApiState, address: str) -> None:
    buckets = state.open_buckets
    bucket = buckets.get(address)
    if bucket is None:
        per_minute = state.settings.opens_per_minute_per_address
        bucket = buckets[address] = TokenBucket(per_minute / 60.0, max(1.0, per_minute / 6))
        if len(buckets) > OPEN_BUCKETS_MAX:
            buckets.popitem(last=False)
    else:
        buckets.move_to_end(address)
    wait = bucket.try_take()
    if wait:
        raise HTTPException(
            429,
            "too many opens from this address",
            headers={"Retry-After": str(max(1, math.ceil(wait))), **CORS},
        )


@router.options("/v1/opens", include_in_schema=False)
async def open_preflight() -> Response:
    """CORS preflight of a browser's service worker (a JSON POST from another origin)."""
    return Response(status_code=204, headers=CORS)


@router.get("/sdk/fanout-sw.js", include_in_schema=False)
async def service_worker() -> Response:
    """The Web Push service worker module: shows fanout's pushes and reports their opens."""
    return Response(
        SERVICE_WORKER.read_bytes(),
        media_type="text/javascript",
        headers={"Cache-Control": "max-age=3600", "Access-Control-Allow-Origin": "*"},
    )
