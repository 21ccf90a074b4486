"""The operator console at /console: server-rendered pages (Jinja2), live through htmx
polling fragments, a uPlot chart; htmx and uPlot are vendored under static/ with their
licences, so nothing is fetched from elsewhere and nothing is built to run it.

``install(app)`` adds it to the API application (``fanout serve``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fanout.api.console.pages import router, templates
from fanout.api.console.session import PATH, ConsoleRefusal

# No inline script or style anywhere: scripts and styles come from /console/static only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(f"{PATH}/static", StaticFiles(directory=Path(__file__).parent / "static"))
    app.add_exception_handler(ConsoleRefusal, _refused)  # type: ignore[arg-type]
    app.add_middleware(ConsoleHeaders)


async def _refused(request: Request, refusal: ConsoleRefusal) -> Response:
    """401 and 403 as in the API; a browser asking for a page is sent to sign in."""
    htmx = request.headers.get("hx-request") == "true"
    if refusal.status == 401 and request.method == "GET" and not htmx:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PATH}/login?next={quote(target)}", status_code=303)
    response = templates.TemplateResponse(
        request,
        "error.html",
        {"session": None, "status": refusal.status, "detail": refusal.detail},
        status_code=refusal.status,
    )
    if refusal.status == 401:
        response.headers["WWW-Authenticate"] = 'Cookie realm="fanout console"'
        if htmx:
            response.headers["HX-Redirect"] = f"{PATH}/login"
    return response


class ConsoleHeaders:
    """The Content-Security-Policy and its companions on every console response; pages
    are never cached (they show live counts and a CSRF token). Pure ASGI, as middleware.py
    explains."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PATH and not path.startswith(PATH + "/"):
            await self.app(scope, receive, send)
            return
        static = path.startswith(f"{PATH}/static/")

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + _HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
