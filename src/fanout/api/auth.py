"""Bearer API keys and their scopes, as FastAPI dependencies.

A route's key is checked before anything else it does: a missing, unknown or revoked
key is 401, a key without the route's scope is 403, and neither tells whether the
resource asked for exists. A key belongs to one app: the routes hand its ``app_id`` to
every statement, so another app's resources are, for it, resources that do not exist.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fanout.api.keys import ADMIN, ApiKey, find_api_key
from fanout.api.state import state_of
from fanout.ratelimit import TokenBucket
from fanout.store.apps import DEFAULT_APP

bearer = HTTPBearer(auto_error=False, description="An API key: fo_<id>_<secret>")
# The operator console calls API routes in-process for its signed-in key (it never holds
# the key's secret) with the key under this ASGI scope entry, which no HTTP client can set.
CONSOLE_KEY = "fanout.console.key"


def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency that admits only live keys carrying ``scope``."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiKey:
        key: ApiKey | None = request.scope.get(CONSOLE_KEY)
        if key is None and credentials is not None and credentials.scheme.lower() == "bearer":
            async with state_of(request).pool.acquire() as conn:
                key = await find_api_key(conn, credentials.credentials)
        if key is None:
            raise HTTPException(
                401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
            )
        if scope not in key.scopes or (scope == ADMIN and key.app != DEFAULT_APP):
            # An admin key of another app than default can only be an old row (keys.py
            # refuses to make one): it manages nothing.
            raise HTTPException(403, f"this API key lacks the '{scope}' scope")
        return key

    return dependency


async def _publisher(
    request: Request, key: Annotated[ApiKey, Depends(require("publish"))]
) -> ApiKey:
    """The per-key publishing rate limit, after authentication: 429 with Retry-After."""
    state = state_of(request)
    bucket = state.publish_buckets.get(key.key_id)
    if bucket is None:
        bucket = state.publish_buckets[key.key_id] = TokenBucket(
            state.settings.api_publish_rate, state.settings.api_publish_burst
        )
    wait = bucket.try_take()
    if wait:
        raise HTTPException(
            429,
            "publishing rate limit reached for this API key",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return key


# Keys with a scope, for the routes: the route reads the key's app from it.
Manager = Annotated[ApiKey, Depends(require("manage"))]
Reader = Annotated[ApiKey, Depends(require("read"))]
Canceller = Annotated[ApiKey, Depends(require("publish"))]  # no publishing rate limit
Admin = Annotated[ApiKey, Depends(require("admin"))]
# A key with the publish scope, within its publishing rate limit (else 429).
Publisher = Annotated[ApiKey, Depends(_publisher)]
