"""The console's app switcher: an admin's session looks at any app, one at a time; any
other session stays on its key's app, and switching is a 404 as for an app that never was."""

from __future__ import annotations

import secrets

import httpx

from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.store import apps, connect, webhooks
from tests.console.conftest import Console, form_token


async def _keys_of_two_apps(settings: Settings) -> tuple[str, str, dict[str, str]]:
    """Two new apps, and keys: an admin (of default), a reader of the first, a publisher of
    the second."""
    first, second = (f"{name}-{secrets.token_hex(3)}" for name in ("first", "second"))
    conn = await connect(settings.database_dsn())
    try:
        for key in (first, second):
            assert await apps.insert_app(conn, key=key, name=key, settings={}) is not None
        keys = {
            "admin": (await create_api_key(conn, ["admin"], "admin"))[1],
            "reader": (await create_api_key(conn, ["read"], "reader", app=first))[1],
            "publisher": (await create_api_key(conn, ["publish"], "pub", app=second))[1],
        }
    finally:
        await conn.close()
    return first, second, keys


async def _switch(client: httpx.AsyncClient, app: str) -> httpx.Response:
    token = form_token((await client.get("/console")).text)
    return await client.post("/console/app", data={"app": app, "csrf_token": token})


async def test_an_admin_switches_the_app_its_console_shows(
    console: Console, settings: Settings
) -> None:
    first, second, keys = await _keys_of_two_apps(settings)
    console.keys.update(keys)
    title = f"title of {second}"
    async with console.client() as api:
        published = await api.post(
            "/v1/events",
            headers={"Authorization": f"Bearer {keys['publisher']}"},
            json={
                "topic": "team:lyon",
                "notification": {"title": title},
                "send_at": "2099-01-01T00:00:00Z",
            },
        )
        assert published.status_code == 202, published.text
    event_id = published.json()["event_id"]

    async with console.signed_in("admin") as admin:
        home = await admin.get("/console")
        assert home.status_code == 200 and '<span id="app">default</span>' in home.text
        # The switcher offers every app; the admin's own app (default) shows none of second's.
        for app in (first, second, "default"):
            assert f'<option value="{app}"' in home.text
        assert title not in home.text
        assert (await admin.get(f"/console/events/{event_id}")).status_code == 404

        switched = await _switch(admin, second)
        assert switched.status_code == 303 and switched.headers["location"] == "/console"
        shown = await admin.get("/console")
        assert f'<span id="app">{second}</span>' in shown.text and title in shown.text
        event = await admin.get(f"/console/events/{event_id}")
        assert event.status_code == 200 and title in event.text

        unknown = await _switch(admin, "never-an-app")
        assert unknown.status_code == 404
        still = await admin.get("/console")  # a refused switch leaves the session as it was
        assert f'<span id="app">{second}</span>' in still.text

        # Every page follows the switch, the webhooks page too (read from the store for
        # the session's app, not through the API as the admin key, which holds no app).
        second_id = await console.app.state.api.pool.fetchval(
            "SELECT id FROM apps WHERE key = $1", second
        )
        async with console.app.state.api.pool.acquire() as conn:
            hook = await webhooks.insert_endpoint(
                conn,
                app_id=second_id,
                url="https://93.184.215.14/second-hooks",
                kinds=["event.finished"],
                secret_sealed=b"\x01sealed",
                kek_id="00000000",
            )
        hooks_page = await admin.get("/console/webhooks")
        assert hooks_page.status_code == 200
        assert f'data-webhook="{hook.id}"' in hooks_page.text

        back = await _switch(admin, first)
        assert back.status_code == 303
        assert title not in (await admin.get("/console")).text
        assert f'data-webhook="{hook.id}"' not in (await admin.get("/console/webhooks")).text


async def test_a_key_of_one_app_cannot_switch_nor_learn_that_another_exists(
    console: Console, settings: Settings
) -> None:
    first, second, keys = await _keys_of_two_apps(settings)
    console.keys.update(keys)
    async with console.signed_in("reader") as reader:
        home = await reader.get("/console")
        assert f'<span id="app">{first}</span>' in home.text
        assert 'action="/console/app"' not in home.text and second not in home.text
        other = await _switch(reader, second)
        never = await _switch(reader, "never-an-app")
        assert other.status_code == never.status_code == 404
        assert other.text.replace(second, "<app>") == never.text.replace("never-an-app", "<app>")
        assert f'<span id="app">{first}</span>' in (await reader.get("/console")).text


async def test_a_switch_without_the_session_csrf_token_is_refused(
    console: Console, settings: Settings
) -> None:
    _, second, keys = await _keys_of_two_apps(settings)
    console.keys.update(keys)
    async with console.signed_in("admin") as admin:
        refused = await admin.post("/console/app", data={"app": second})
        assert refused.status_code == 403
        assert '<span id="app">default</span>' in (await admin.get("/console")).text


async def test_an_admin_scope_on_another_apps_key_switches_nothing(
    console: Console, settings: Settings
) -> None:
    # Only a key of default can be an admin (keys.py refuses to make another); an old row
    # of another app with the scope manages nothing, in the console as in the API.
    first, second, keys = await _keys_of_two_apps(settings)
    async with console.app.state.api.pool.acquire() as conn:
        await conn.execute(
            "UPDATE api_keys SET scopes = ARRAY['read', 'admin'] WHERE name = 'reader'"
            " AND app_id = (SELECT id FROM apps WHERE key = $1)",
            first,
        )
    console.keys.update(keys)
    async with console.signed_in("reader") as stray:
        home = await stray.get("/console")
        assert f'<span id="app">{first}</span>' in home.text
        assert 'action="/console/app"' not in home.text and second not in home.text
        assert (await _switch(stray, second)).status_code == 404
        assert f'<span id="app">{first}</span>' in (await stray.get("/console")).text
