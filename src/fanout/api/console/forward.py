"""Calling an API route in-process on behalf of the console's signed-in key.

The console never holds a key's secret, so it cannot send a bearer token. It runs the
route through the application itself with the key under ``auth.CONSOLE_KEY`` in the ASGI
scope, which no HTTP client can set; the route's own dependency (``auth.require``) checks
that key's scopes and rate limits, so the console answers with the API's own 401, 403,
404 or 409.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.routing import Match

from fanout.api.auth import CONSOLE_KEY
from fanout.api.keys import ApiKey


def serves(app: Any, method: str, path: str) -> bool:
    """Whether the app has a route for ``method path`` (a feature another build may add),
    asked through the routes' own matching, as a request would be routed."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    return any(route.matches(scope)[0] is Match.FULL for route in app.router.routes)


async def call_as(app: Any, key: ApiKey, method: str, path: str) -> tuple[int, Any]:
    """Run ``method path`` (no body) through the app as ``key``; (status, JSON body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", b"0"), (b"host", b"console.internal")],
        "client": ("127.0.0.1", 0),
        "server": ("console.internal", 80),
        CONSOLE_KEY: key,
    }
    status = 500
    body = bytearray()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    try:
        return status, orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return status, body.decode(errors="replace")
