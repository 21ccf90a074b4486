"""Signing in to the console with an API key, and what every console request checks.

The key is checked once, at sign-in (it must have the ``read`` or the ``admin`` scope),
and never stored: the browser gets a random session token in an HttpOnly, SameSite=Strict
cookie and PostgreSQL keeps only its sha256 (``console_sessions``), so every API worker
knows every session, a copy of the table signs nobody in, and revoking the key ends its
sessions (the key is joined on every request). A session looks at its key's app; an
admin's (the admin scope manages every app) at the app it switched to (``POST
/console/app``). Each form carries a CSRF token derived from the session token (an HMAC of
it, so the page never shows the token itself); htmx sends it as the ``X-CSRF-Token``
header. The sign-in form, before there is a session, is protected by a double-submit
cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs

from fastapi import Request
from starlette.responses import Response

from fanout.api.keys import ApiKey, find_api_key
from fanout.api.state import state_of
from fanout.errors import FanoutError
from fanout.store import apps, console
from fanout.store.apps import DEFAULT_APP

COOKIE = "fanout_console"
LOGIN_COOKIE = "fanout_console_login"  # the sign-in form's double-submit CSRF token
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
PATH = "/console"
ADMIN = "admin"  # the scope that manages every app: its sessions switch between them


class ConsoleRefusal(FanoutError):
    """A console request refused: 401 (no live session) or 403 (scope, CSRF), as in the API."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def csrf_token(session_token: str) -> str:
    """The session's CSRF token: an HMAC of the session token, so it reveals nothing."""
    return hmac.new(session_token.encode(), b"fanout console csrf", hashlib.sha256).hexdigest()


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the console's forms send nothing else)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return {}
    parsed = parse_qs((await request.body()).decode(errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def is_admin(key: ApiKey) -> bool:
    """An admin key, as the API holds it (api/auth.py): only a key of default can be one;
    an ``admin`` scope on another app's key is an old row that manages nothing."""
    return ADMIN in key.scopes and key.app == DEFAULT_APP


async def sign_in(request: Request, response: Response, token: str) -> ApiKey:
    """Check the key; on success set the session cookie. Raises ConsoleRefusal."""
    state = state_of(request)
    async with state.pool.acquire() as conn:
        key = await find_api_key(conn, token.strip())
        if key is None:
            raise ConsoleRefusal(401, "missing or invalid API key")
        if not ({"read"} & key.scopes or is_admin(key)):
            raise ConsoleRefusal(403, "this API key lacks the 'read' scope")
        session = secrets.token_urlsafe(32)
        await console.delete_expired_console_sessions(conn)
        await console.insert_console_session(
            conn,
            token_hash=_hash(session),
            api_key_id=key.id,
            hours=state.settings.console_session_hours,
        )
    response.set_cookie(
        COOKIE,
        session,
        max_age=state.settings.console_session_hours * 3600,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path=PATH)
    return key


async def sign_out(request: Request, response: Response) -> None:
    token = request.cookies.get(COOKIE)
    if token:
        async with state_of(request).pool.acquire() as conn:
            await console.delete_console_session(conn, token_hash=_hash(token))
    response.delete_cookie(COOKIE, path=PATH)


def login_csrf(request: Request) -> str:
    """The sign-in form's CSRF token: the one its cookie holds, or a new one."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def set_login_csrf(request: Request, response: Response, token: str) -> None:
    """Keep the sign-in form's token in a cookie, to compare with the form's copy."""
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def check_login_csrf(request: Request, fields: dict[str, str]) -> None:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    given = fields.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(expected, given):
        raise ConsoleRefusal(403, "CSRF token missing or wrong: reload the sign-in page")


class Session:
    """The signed-in key of a console request, the app its pages show (``app_id``, ``app``:
    the key's, or for an admin the one it switched to), and its CSRF token for the forms."""

    def __init__(self, key: ApiKey, token: str, viewing: tuple[int, str] | None = None) -> None:
        self.key = key
        self.token_hash = _hash(token)
        self.csrf = csrf_token(token)
        self.admin = is_admin(key)
        self.app_id, self.app = viewing if viewing and self.admin else (key.app_id, key.app)
        self.apps: list[str] = [self.app]  # the apps it may see (an admin's: every one)

    def can(self, scope: str) -> bool:
        return scope in self.key.scopes or (scope == "read" and self.admin)

    def require(self, scope: str) -> None:
        if not self.can(scope):
            raise ConsoleRefusal(403, f"this API key lacks the '{scope}' scope")


async def current_session(request: Request) -> Session:
    """The request's live session, whose key has ``read``; else ConsoleRefusal(401/403)."""
    token = request.cookies.get(COOKIE)
    found = None
    if token:
        async with state_of(request).pool.acquire() as conn:
            found = await console.console_session_key(conn, token_hash=_hash(token))
    if token is None or found is None:
        raise ConsoleRefusal(401, "not signed in, or the session has ended: sign in again")
    key = ApiKey(
        found.id, found.key_id, frozenset(found.scopes), found.name, found.app_id, found.app
    )
    viewing = None
    if found.viewing_app_id is not None and found.viewing_app is not None:
        viewing = (found.viewing_app_id, found.viewing_app)
    session = Session(key, token, viewing)
    session.require("read")
    if session.admin:
        async with state_of(request).pool.acquire() as conn:
            session.apps = [listed.key for listed in await apps.list_apps(conn)]
    return session


async def switch_app(request: Request, session: Session, app_key: str) -> None:
    """Look at the app ``app_key`` from now on: an admin's session only. For any other
    session, as for an app that does not exist, ConsoleRefusal(404): a key of one app learns
    nothing of the others, not even their names."""
    async with state_of(request).pool.acquire() as conn:
        found = await apps.app_by_key(conn, key=app_key) if session.admin else None
        if found is None:
            raise ConsoleRefusal(404, f"no app {app_key!r}")
        await console.set_console_session_app(conn, token_hash=session.token_hash, app_id=found.id)


async def checked_form(request: Request, session: Session) -> dict[str, str]:
    """A POST's form fields once its CSRF token (field or header) is the session's."""
    fields = await form_fields(request)
    given = request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD, "")
    if not given or not hmac.compare_digest(given, session.csrf):
        raise ConsoleRefusal(403, "CSRF token missing or wrong: reload the page")
    return fields
