"""The console's routes: pages, the fragments htmx polls, and the two actions.

Every route but sign-in needs a live session whose key has ``read``; a POST also needs
the session's CSRF token, and an action the scope the API would ask for (cancel:
``publish``, through the API's own route; redrive: ``manage``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fanout.api.console import views
from fanout.api.console.forward import call_as, serves
from fanout.api.console.session import (
    ConsoleRefusal,
    Session,
    check_login_csrf,
    checked_form,
    current_session,
    form_fields,
    login_csrf,
    set_login_csrf,
    sign_in,
    sign_out,
    switch_app,
)
from fanout.api.routes.webhooks import delivery_out, webhook_out
from fanout.api.state import state_of
from fanout.queue.admin import redrive
from fanout.store import webhooks
from fanout.store.apps import DEFAULT_APP
from fanout.store.lifecycle import EventState

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
SignedIn = Annotated[Session, Depends(current_session)]
STATES = [state.value for state in EventState]
DEPLOYMENT_ONLY = (
    f"the queues, their dead letters and the process counters are the deployment's (every "
    f"app's work): shown to keys of the app {DEFAULT_APP} only"
)


def _seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:,.1f} s"


def _time(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates.env.filters["seconds"] = _seconds
templates.env.filters["time"] = _time
templates.env.globals["outcome_columns"] = views.OUTCOME_COLUMNS


def _page(
    request: Request, name: str, session: Session | None, http_status: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"session": session, "http_status": http_status, **context}, http_status
    )


def _cancel_path(event_id: int) -> str:
    return f"/v1/events/{event_id}/cancel"


def _can_cancel(request: Request, event_id: int) -> bool:
    """Whether this build has the API's cancel route (POST /v1/events/{id}/cancel)."""
    return serves(request.app, "POST", _cancel_path(event_id))


# --- signing in -------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, next: str = "/console") -> HTMLResponse:
    return _login_form(request, _local(next), None, 200)


def _login_form(request: Request, target: str, error: str | None, status: int) -> HTMLResponse:
    token = login_csrf(request)
    page = _page(request, "login.html", None, status, next=target, error=error, login_csrf=token)
    set_login_csrf(request, page, token)
    return page


@router.post("/login")
async def login(request: Request) -> Response:
    fields = await form_fields(request)
    target = _local(fields.get("next", "/console"))
    try:
        check_login_csrf(request, fields)
        response = RedirectResponse(target, status_code=303)
        await sign_in(request, response, fields.get("api_key", ""))
        return response
    except ConsoleRefusal as refusal:
        return _login_form(request, target, refusal.detail, refusal.status)


def _local(target: str) -> str:
    """Only a path of the console: never an open redirect."""
    return target if target.startswith("/console") and "//" not in target else "/console"


@router.post("/logout")
async def logout(request: Request, session: SignedIn) -> Response:
    await checked_form(request, session)
    response = RedirectResponse("/console/login", status_code=303)
    await sign_out(request, response)
    return response


@router.post("/app")
async def switch_app_page(request: Request, session: SignedIn) -> Response:
    """An admin's session looks at another app from now on (the form's ``app``: its key);
    any other session gets 404, as for an app that does not exist."""
    fields = await checked_form(request, session)
    await switch_app(request, session, fields.get("app", ""))
    return RedirectResponse("/console", status_code=303)


# --- events -----------------------------------------------------------------------------


def _filters(topic: str | None, status: str | None) -> tuple[str | None, str | None]:
    return (topic or None), (status if status in STATES else None)


@router.get("")
async def events_page(
    request: Request, session: SignedIn, topic: str | None = None, status: str | None = None
) -> HTMLResponse:
    topic, status = _filters(topic, status)
    rows = await views.event_rows(
        state_of(request).pool, app_id=session.app_id, topic=topic, status=status
    )
    query = "&".join(
        f"{name}={quote(value)}" for name, value in (("topic", topic), ("status", status)) if value
    )
    return _page(
        request,
        "events.html",
        session,
        rows=rows,
        topic=topic or "",
        status=status or "",
        states=STATES,
        query=query,
    )


@router.get("/events/rows")
async def events_rows(
    request: Request, session: SignedIn, topic: str | None = None, status: str | None = None
) -> HTMLResponse:
    topic, status = _filters(topic, status)
    rows = await views.event_rows(
        state_of(request).pool, app_id=session.app_id, topic=topic, status=status
    )
    return _page(request, "_event_rows.html", session, rows=rows)


async def _event_or_404(request: Request, session: Session, event_id: int) -> views.EventRow:
    """The signed-in key's app's event; another app's is a 404, as one that never was."""
    event = await views.one_event(state_of(request).pool, event_id, app_id=session.app_id)
    if event is None:
        raise ConsoleRefusal(404, f"no event {event_id}")
    return event


@router.get("/events/{event_id}")
async def event_page(request: Request, session: SignedIn, event_id: int) -> HTMLResponse:
    state = state_of(request)
    event = await _event_or_404(request, session, event_id)
    detail = await views.event_detail(state.pool, event)
    dead_letters, dlq_error = [], None
    try:
        dead_letters = await views.dead_letters_of(await state.get_queues(), event_id)
    except Exception as exc:  # SQS down: the page still shows what PostgreSQL knows
        dlq_error = f"could not read the dead-letter queues: {type(exc).__name__}"
    return _page(
        request,
        "event.html",
        session,
        d=detail,
        dead_letters=dead_letters,
        dlq_error=dlq_error,
        can_cancel=_can_cancel(request, event_id),
    )


@router.get("/events/{event_id}/live")
async def event_live(request: Request, session: SignedIn, event_id: int) -> HTMLResponse:
    event = await _event_or_404(request, session, event_id)
    detail = await views.event_detail(state_of(request).pool, event)
    return _page(
        request,
        "_event_live.html",
        session,
        d=detail,
        can_cancel=_can_cancel(request, event_id),
    )


@router.get("/events/{event_id}/throughput.json")
async def event_throughput(request: Request, session: SignedIn, event_id: int) -> JSONResponse:
    event = await _event_or_404(request, session, event_id)
    data = await views.throughput(state_of(request).pool, event, datetime.now(UTC))
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


@router.post("/events/{event_id}/cancel")
async def cancel_event(request: Request, session: SignedIn, event_id: int) -> Response:
    """Through the API's own cancel route, as the signed-in key (it checks ``publish``)."""
    await checked_form(request, session)
    if not _can_cancel(request, event_id):
        raise ConsoleRefusal(404, "this build cannot cancel events")
    status, body = await call_as(request.app, session.key, "POST", _cancel_path(event_id))
    if status >= 400:
        detail = body.get("detail") if isinstance(body, dict) else body
        raise ConsoleRefusal(status, f"cancel refused: {detail}")
    return RedirectResponse(f"/console/events/{event_id}", status_code=303)


# --- where is my push -------------------------------------------------------------------


@router.get("/where")
async def where_page(
    request: Request,
    session: SignedIn,
    event: str = "",
    user: str = "",
    device: str = "",
) -> HTMLResponse:
    answer: views.WhereAnswer | str | None = None
    if event or user or device:
        answer = await _where(request, session, event, user.strip(), device.strip())
    return _page(
        request, "where.html", session, answer=answer, event=event, user=user, device=device
    )


async def _where(
    request: Request, session: Session, event: str, user: str, device: str
) -> views.WhereAnswer | str:
    if not event.strip().isdigit():
        return "event: give the event's number"
    if not user and not device.isdigit():
        return "give a user's external id, or a device's number"
    app_id = session.app_id
    found = await views.one_event(state_of(request).pool, int(event), app_id=app_id)
    if found is None:
        return f"no event {event}"
    return await views.where_is_my_push(
        state_of(request).pool,
        found,
        app_id=app_id,
        user_external_id=user or None,
        device_id=int(device) if device.isdigit() and not user else None,
    )


# --- providers and queues ---------------------------------------------------------------


@router.get("/queues")
async def queues_page(request: Request, session: SignedIn, moved: str = "") -> HTMLResponse:
    state = state_of(request)
    providers = await views.providers_last_minute(state.pool, app_id=session.app_id)
    view, error = None, None
    # The queues, their dead letters and this process's counters are the deployment's,
    # every app's work together: only a key of the default app (the operator's) sees them.
    deployment = session.key.app == DEFAULT_APP
    if not deployment:
        error = DEPLOYMENT_ONLY
    else:
        try:
            view = await views.queues_view(
                state.pool, await state.get_queues(), app_id=session.app_id
            )
        except Exception as exc:
            error = f"could not read the queues: {type(exc).__name__}: {exc}"
    return _page(
        request,
        "queues.html",
        session,
        providers=providers,
        counters=views.process_counters() if deployment else [],
        view=view,
        error=error,
        moved=moved,
    )


@router.post("/queues/{role}/redrive")
async def redrive_queue(request: Request, session: SignedIn, role: str) -> Response:
    """Move a queue's dead letters back to it (the ``manage`` scope, as `fanout dlq`)."""
    await checked_form(request, session)
    session.require("manage")
    if session.key.app != DEFAULT_APP:
        raise ConsoleRefusal(403, DEPLOYMENT_ONLY)
    if role not in ("fanout", "delivery"):
        raise ConsoleRefusal(404, f"no queue {role!r}: fanout or delivery")
    queues = await state_of(request).get_queues()
    moved = await redrive(queues.fanout if role == "fanout" else queues.delivery)
    note = quote(f"{moved} message(s) moved back to the {role} queue")
    return RedirectResponse(f"/console/queues?moved={note}", status_code=303)


# --- webhooks -----------------------------------------------------------------------------
# Read from the store for the session's app (an admin's switched app too), in the shapes
# GET /v1/webhooks/{id} answers (never a secret); a replay is POST /v1/webhooks/…/replay
# through the API as the signed-in key (the manage scope), as every console action is.
WEBHOOK_DELIVERIES_SHOWN = 10


@router.get("/webhooks")
async def webhooks_page(request: Request, session: SignedIn, replayed: str = "") -> HTMLResponse:
    endpoints = []
    async with state_of(request).pool.acquire() as conn:
        for endpoint in await webhooks.list_endpoints(conn, app_id=session.app_id):
            recent = await webhooks.recent_deliveries(
                conn,
                app_id=session.app_id,
                endpoint_id=endpoint.id,
                limit=WEBHOOK_DELIVERIES_SHOWN,
            )
            endpoints.append(
                {
                    **webhook_out(endpoint).model_dump(mode="json"),
                    "deliveries": [delivery_out(d).model_dump(mode="json") for d in recent],
                }
            )
    return _page(request, "webhooks.html", session, endpoints=endpoints, replayed=replayed)


async def _replay(request: Request, session: Session, path: str) -> Response:
    await checked_form(request, session)
    status, body = await call_as(request.app, session.key, "POST", path)
    if status >= 400:
        detail = body.get("detail") if isinstance(body, dict) else body
        raise ConsoleRefusal(status, f"replay refused: {detail}")
    note = quote(f"{body['replayed']} deliveries sent again")
    return RedirectResponse(f"/console/webhooks?replayed={note}", status_code=303)


@router.post("/webhooks/{webhook_id}/replay")
async def replay_webhook(request: Request, session: SignedIn, webhook_id: int) -> Response:
    """Enable the endpoint again and send its failed deliveries again (``manage``)."""
    return await _replay(request, session, f"/v1/webhooks/{webhook_id}/replay")


@router.post("/webhooks/deliveries/{delivery_id}/replay")
async def replay_webhook_delivery(
    request: Request, session: SignedIn, delivery_id: int
) -> Response:
    """Send one failed delivery again (``manage``)."""
    return await _replay(request, session, f"/v1/webhooks/deliveries/{delivery_id}/replay")
