"""Who may see and do what in the console, and the page hardening, against the ASGI app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fanout.api.console import CONTENT_SECURITY_POLICY
from fanout.api.console.session import COOKIE
from fanout.notification import Notification
from fanout.stages.progress import load_event_status
from fanout.stages.publish import PublishOptions, publish
from tests.console.conftest import Console, form_token, page_parts


async def _event(console: Console) -> int:
    state = console.app.state.api
    published = await publish(state.pool, state.get_queues, Notification(title="Hi"), user="u-1")
    return published.event_id


async def test_pages_send_a_browser_without_a_session_to_sign_in(console: Console) -> None:
    async with console.client() as client:
        page = await client.get("/console/queues")
        assert page.status_code == 303
        assert page.headers["location"] == "/console/login?next=/console/queues"
        fragment = await client.get("/console/events/rows", headers={"HX-Request": "true"})
        assert fragment.status_code == 401
        assert fragment.headers["HX-Redirect"] == "/console/login"
        data = await client.get("/console/events/1/throughput.json", headers={"HX-Request": "true"})
        assert data.status_code == 401
        action = await client.post("/console/queues/delivery/redrive", data={"csrf_token": "x"})
        assert action.status_code == 401


async def test_sign_in_needs_a_live_key_with_the_read_scope(console: Console) -> None:
    async with console.client() as client:
        token = form_token((await client.get("/console/login")).text)
        unknown = await client.post(
            "/console/login", data={"api_key": "fo_nope_nope", "csrf_token": token}
        )
        assert unknown.status_code == 401
        no_read = await client.post(
            "/console/login", data={"api_key": console.keys["publish_only"], "csrf_token": token}
        )
        assert no_read.status_code == 403
        assert "lacks the &#39;read&#39; scope" in no_read.text
        assert COOKIE not in client.cookies


async def test_sign_in_without_its_csrf_token_is_refused(console: Console) -> None:
    async with console.client() as client:
        await client.get("/console/login")
        refused = await client.post("/console/login", data={"api_key": console.keys["read"]})
        assert refused.status_code == 403
        assert COOKIE not in client.cookies


async def test_session_cookie_is_httponly_strict_and_not_the_key(console: Console) -> None:
    async with console.client() as client:
        token = form_token((await client.get("/console/login")).text)
        response = await client.post(
            "/console/login", data={"api_key": console.keys["read"], "csrf_token": token}
        )
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith(COOKIE + "=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        assert console.keys["read"] not in cookie and value not in console.keys["read"]
        async with console.app.state.api.pool.acquire() as conn:
            stored = await conn.fetchval("SELECT count(*) FROM console_sessions")
            in_clear = await conn.fetchval(
                "SELECT count(*) FROM console_sessions WHERE token_hash = convert_to($1, 'UTF8')",
                value,
            )
        assert (stored, in_clear) == (1, 0)


async def test_a_read_only_key_cannot_redrive(console: Console) -> None:
    async with console.signed_in("read") as client:
        page = await client.get("/console/queues")
        assert page.status_code == 200
        refused = await client.post(
            "/console/queues/delivery/redrive", data={"csrf_token": form_token(page.text)}
        )
        assert refused.status_code == 403
        assert "lacks the &#39;manage&#39; scope" in refused.text


async def test_a_manage_key_redrives(console: Console) -> None:
    async with console.signed_in("manage") as client:
        page = await client.get("/console/queues")
        moved = await client.post(
            "/console/queues/delivery/redrive", data={"csrf_token": form_token(page.text)}
        )
        assert moved.status_code == 303
        assert "0%20message%28s%29%20moved%20back" in moved.headers["location"]


async def test_a_post_without_the_session_csrf_token_is_refused(console: Console) -> None:
    async with console.signed_in("manage") as client:
        missing = await client.post("/console/queues/delivery/redrive")
        wrong = await client.post("/console/queues/delivery/redrive", data={"csrf_token": "0" * 64})
        header = await client.post(
            "/console/queues/delivery/redrive",
            headers={"X-CSRF-Token": form_token((await client.get("/console/queues")).text)},
        )
    assert (missing.status_code, wrong.status_code, header.status_code) == (403, 403, 303)


async def test_revoking_the_key_ends_its_sessions(console: Console) -> None:
    async with console.signed_in("read") as client:
        assert (await client.get("/console")).status_code == 200
        key_id = console.keys["read"].split("_")[1]
        async with console.app.state.api.pool.acquire() as conn:
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", key_id)
        assert (await client.get("/console")).status_code == 303


async def test_every_page_has_the_csp_and_no_inline_script_or_secret(console: Console) -> None:
    event_id = await _event(console)
    async with console.signed_in("all") as client:
        session = client.cookies[COOKIE]
        paths = [
            "/console",
            "/console/events/rows",
            f"/console/events/{event_id}",
            f"/console/events/{event_id}/live",
            f"/console/where?event={event_id}&user=u-1",
            "/console/queues",
            "/console/events/999999",  # the refusal page
        ]
        pages = [await client.get(path) for path in paths]
    async with console.client() as anonymous:
        pages.append(await anonymous.get("/console/login"))
    for path, page in zip([*paths, "/console/login"], pages, strict=True):
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert page.headers["cache-control"] == "no-store", path
        parts = page_parts(page.text)
        assert (parts.inline_scripts, parts.handlers, parts.styles) == (0, [], 0), path
        assert all(src.startswith("/console/static/") for src in parts.external_scripts), path
        for secret in [*console.keys.values(), session]:
            assert secret not in page.text, path


async def test_static_files_are_served_with_their_licences(console: Console) -> None:
    async with console.client() as client:
        for name in ("htmx.min.js", "htmx.LICENSE", "uPlot.iife.min.js", "uPlot.LICENSE"):
            response = await client.get(f"/console/static/{name}")
            assert response.status_code == 200, name
            assert "content-security-policy" in response.headers


async def test_cancel_goes_through_the_api_route_with_its_scope(console: Console) -> None:
    state = console.app.state.api
    published = await publish(
        state.pool,
        state.get_queues,
        Notification(title="Later"),
        user="u-1",
        options=PublishOptions(send_at=datetime.now(UTC) + timedelta(days=1)),
    )
    event_id = published.event_id
    async with console.signed_in("read") as client:
        page = await client.get(f"/console/events/{event_id}")
        assert 'id="cancel"' in page.text
        refused = await client.post(
            f"/console/events/{event_id}/cancel", data={"csrf_token": form_token(page.text)}
        )
        assert refused.status_code == 403 and "publish" in refused.text
    async with console.signed_in("publisher") as client:
        page = await client.get(f"/console/events/{event_id}")
        done = await client.post(
            f"/console/events/{event_id}/cancel", data={"csrf_token": form_token(page.text)}
        )
        assert done.status_code == 303
    found = await load_event_status(state.pool, event_id)
    assert found is not None and found.status == "cancelled"
