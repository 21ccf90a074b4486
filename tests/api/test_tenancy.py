"""Tenancy: for a key of app B, every resource of app A does not exist.

The test walks every route of the OpenAPI document and every console page. Each route is
called with B's key on A's resources and with B's key on resources that never existed, and
the two answers must be the same (status and body, the names themselves aside) and hold
nothing of A's; then A's own key gets A's resources (so the test cannot pass because
nothing was there), and A's resources are as A left them. A route added without an entry
here fails the test: the table must name every route.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr

from fanout.api import create_app
from fanout.api.console import pages as console_pages
from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.store import apps, connect
from tests.console.conftest import form_token

APP_SCOPES = ["publish", "manage", "read"]


@dataclass(frozen=True)
class Names:
    """The external names of one set of resources: a user, a topic, a cap's category, a
    Live Activity, a device and an event (their ids), an APNs token."""

    user: str
    topic: str
    category: str
    activity: str
    token: str
    device_id: int = 0
    event_id: int = 0
    webhook_id: int = 0
    delivery_id: int = 0

    def path_parameters(self) -> dict[str, str]:
        return {
            "user_id": self.user,
            "topic": self.topic,
            "category": self.category,
            "activity_id": self.activity,
            "device_id": str(self.device_id),
            "event_id": str(self.event_id),
            "kind": "subscriptions",
            "webhook_id": str(self.webhook_id),
            "delivery_id": str(self.delivery_id),
        }


def new_names(label: str) -> Names:
    run = secrets.token_hex(4)
    return Names(
        user=f"{label}-user-{run}",
        topic=f"{label}-topic-{run}",
        category=f"{label}-{run}",
        activity=f"{label}-activity-{run}",
        token=secrets.token_hex(32),
    )


# Every route of the OpenAPI document: the body each is called with (None: none), built
# from the names it is called on. Routes without a key of their own are listed apart.
def bodies(names: Names) -> dict[tuple[str, str], Any]:
    return {
        ("POST", "/v1/devices"): {
            "user_id": names.user,
            "platform": "apns",
            "token": names.token,
            "locale": "en",
        },
        ("DELETE", "/v1/devices/{device_id}"): None,
        ("PUT", "/v1/topics/{topic}/subscribers/{user_id}"): None,
        ("DELETE", "/v1/topics/{topic}/subscribers/{user_id}"): None,
        ("POST", "/v1/topics/{topic}/subscribers"): {"user_ids": [names.user]},
        ("GET", "/v1/users/{user_id}/subscriptions"): None,
        # One NDJSON line: B's import knows none of A's users (each line rejected alike).
        ("POST", "/v1/imports/{kind}"): {"topic": names.topic, "user_id": names.user},
        ("PUT", "/v1/users/{user_id}/preferences"): {"time_zone": "Asia/Tokyo"},
        ("GET", "/v1/users/{user_id}/preferences"): None,
        ("PUT", "/v1/users/{user_id}/tags"): {"plan": "free"},
        ("GET", "/v1/users/{user_id}/tags"): None,
        ("POST", "/v1/preferences"): {"items": [{"user_id": names.user, "opted_out": True}]},
        ("PUT", "/v1/users/{user_id}/mutes/{topic}"): None,
        ("DELETE", "/v1/users/{user_id}/mutes/{topic}"): None,
        ("GET", "/v1/frequency-caps"): None,
        ("PUT", "/v1/frequency-caps/{category}"): {"max": 9, "window_seconds": 60},
        ("DELETE", "/v1/frequency-caps/{category}"): None,
        ("POST", "/v1/events"): {"topic": names.topic, "notification": {"title": "from B"}},
        ("POST", "/v1/users/{user_id}/notifications"): {"notification": {"title": "from B"}},
        ("POST", "/v1/notifications/batch"): {
            "items": [{"user_id": names.user, "notification": {"title": "from B"}}]
        },
        ("GET", "/v1/events/{event_id}"): None,
        ("POST", "/v1/events/{event_id}/cancel"): None,
        ("POST", "/v1/live-activities/{activity_id}/tokens"): {
            "user_id": names.user,
            "token": names.token,
            "topic": names.topic,
        },
        ("POST", "/v1/live-activities/{activity_id}/updates"): {
            "event": "update",
            "content_state": {"score": "from B"},
            "priority": 10,
        },
        # A public address given as such: nothing is resolved, nothing is called.
        ("POST", "/v1/webhooks"): {
            "url": "https://93.184.215.14/hook",
            "kinds": ["event.finished"],
        },
        ("GET", "/v1/webhooks"): None,
        ("GET", "/v1/webhooks/{webhook_id}"): None,
        ("DELETE", "/v1/webhooks/{webhook_id}"): None,
        ("POST", "/v1/webhooks/{webhook_id}/test"): None,
        ("POST", "/v1/webhooks/{webhook_id}/replay"): None,
        ("POST", "/v1/webhooks/deliveries/{delivery_id}/replay"): None,
    }


# Routes that need no key: liveness and the Prometheus scrape, for the operator.
# POST /v1/opens: the fo_open token is the credential (an app reports from the phone).
WITHOUT_KEY = {("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/v1/opens")}
# The admin scope's routes: an app's key (with every app scope) is refused them.
ADMIN_ROUTES = {
    ("GET", "/v1/apps"),
    ("POST", "/v1/apps"),
    ("GET", "/v1/apps/{app}"),
    ("PATCH", "/v1/apps/{app}"),
    ("DELETE", "/v1/apps/{app}"),
    ("PUT", "/v1/apps/{app}/credentials/{provider}"),
    ("DELETE", "/v1/apps/{app}/credentials/{provider}"),
    ("GET", "/v1/apps/{app}/keys"),
    ("POST", "/v1/apps/{app}/keys"),
    ("DELETE", "/v1/apps/{app}/keys/{key_id}"),
    # Sources (issue #25): a source's query runs with fanout's own database role.
    ("GET", "/v1/apps/{app}/sources"),
    ("PUT", "/v1/apps/{app}/sources/{prefix}"),
    ("GET", "/v1/apps/{app}/sources/{prefix}/test"),
    ("DELETE", "/v1/apps/{app}/sources/{prefix}"),
}


def openapi_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }


@dataclass
class Tenants:
    app: FastAPI
    a: Names
    b_never: Names  # names nothing has ever had, in any app
    keys: dict[str, str]  # "a", "b", "admin" -> token

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://tenancy.test",
            headers=headers,
        )

    @contextlib.asynccontextmanager
    async def console(self, key: str) -> AsyncIterator[httpx.AsyncClient]:
        async with self.client() as client:
            page = await client.get("/console/login")
            signed = await client.post(
                "/console/login",
                data={"api_key": self.keys[key], "csrf_token": form_token(page.text)},
            )
            assert signed.status_code == 303, signed.text
            yield client


async def _seed_app_a(client: httpx.AsyncClient, names: Names) -> Names:
    """A's resources, made through the API with A's key: a device, a subscription, settings,
    a mute, a cap, a Live Activity with a token and an update, an event (held, so it stays
    cancellable)."""
    device = await client.post("/v1/devices", json=bodies(names)[("POST", "/v1/devices")])
    assert device.status_code == 201, device.text
    for method, path, body in (
        ("PUT", f"/v1/topics/{names.topic}/subscribers/{names.user}", None),
        ("PUT", f"/v1/users/{names.user}/preferences", {"time_zone": "Europe/Berlin"}),
        ("PUT", f"/v1/users/{names.user}/tags", {"plan": "premium"}),
        ("PUT", f"/v1/users/{names.user}/mutes/{names.topic}", None),
        ("PUT", f"/v1/frequency-caps/{names.category}", {"max": 2, "window_seconds": 3600}),
        (
            "POST",
            f"/v1/live-activities/{names.activity}/tokens",
            {"user_id": names.user, "token": names.token, "topic": names.topic},
        ),
        (
            "POST",
            f"/v1/live-activities/{names.activity}/updates",
            {"event": "update", "content_state": {"score": "A's"}, "priority": 10},
        ),
    ):
        answer = await client.request(method, path, json=body)
        assert answer.status_code in (201, 202, 204), (path, answer.text)
    event = await client.post(
        "/v1/events",
        json={
            "topic": names.topic,
            "notification": {"title": f"title of {names.user}"},
            "send_at": "2099-01-01T00:00:00Z",
        },
    )
    assert event.status_code == 202, event.text
    webhook = await client.post("/v1/webhooks", json=bodies(names)[("POST", "/v1/webhooks")])
    assert webhook.status_code == 201, webhook.text
    test = await client.post(f"/v1/webhooks/{webhook.json()['id']}/test")
    assert test.status_code == 202, test.text
    return Names(
        user=names.user,
        topic=names.topic,
        category=names.category,
        activity=names.activity,
        token=names.token,
        device_id=device.json()["id"],
        event_id=event.json()["event_id"],
        webhook_id=webhook.json()["id"],
        delivery_id=test.json()["delivery_id"],
    )


@pytest.fixture
async def tenants(settings: Settings) -> AsyncIterator[Tenants]:
    # Webhook secrets are stored sealed: a key to seal them with.
    settings = settings.model_copy(update={"secret_key": SecretStr(generate_key())})
    async with open_client(settings) as client:
        await create_queues(client, settings)
    conn = await connect(settings.database_dsn())
    try:
        # Neither is the default app: a statement that forgot its app would put A's rows
        # in `default`, and A's own key would then not find them (the sanity half fails).
        for key in ("alpha-app", "beta-app"):
            assert await apps.insert_app(conn, key=key, name=key, settings={}) is not None
        # Ids no page holds by chance (a "1" is in every page), so that an answer can be
        # compared with the ids it was asked about taken out.
        for table in ("devices", "events", "webhook_endpoints", "webhook_deliveries"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"{secrets.randbelow(10**6) + 7 * 10**6})"
            )
        keys = {
            "a": (await create_api_key(conn, APP_SCOPES, "a", app="alpha-app"))[1],
            "b": (await create_api_key(conn, APP_SCOPES, "b", app="beta-app"))[1],
            "admin": (await create_api_key(conn, ["admin"], "admin"))[1],
        }
    finally:
        await conn.close()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        tenants = Tenants(app, new_names("alpha"), new_names("never"), keys)
        async with tenants.client("a") as client:
            tenants.a = await _seed_app_a(client, tenants.a)
        # Ids nothing has: past every row made so far.
        tenants.b_never = Names(
            user=tenants.b_never.user,
            topic=tenants.b_never.topic,
            category=tenants.b_never.category,
            activity=tenants.b_never.activity,
            token=tenants.b_never.token,
            device_id=tenants.a.device_id + 10_000,
            event_id=tenants.a.event_id + 10_000,
            webhook_id=tenants.a.webhook_id + 10_000,
            delivery_id=tenants.a.delivery_id + 10_000,
        )
        yield tenants


def _url(path: str, names: Names) -> str:
    return path.format(**names.path_parameters())


def _normalised(text: str, names: Names) -> str:
    """An answer with the names it was asked about replaced: what is left must not differ."""
    for value in (names.user, names.topic, names.category, names.activity):
        text = text.replace(value, "<name>")
    for number in (names.device_id, names.event_id, names.webhook_id, names.delivery_id):
        text = re.sub(rf"\b{number}\b", "<id>", text)
    return text


def _holds_nothing_of(text: str, a: Names) -> None:
    """Nothing of A's in an answer (once what B itself asked about is taken out of it: a
    page may echo its own query)."""
    for secret in (a.user, a.topic, a.category, a.activity, f"title of {a.user}"):
        assert secret not in text, f"A's {secret!r} in B's answer"


async def test_every_route_of_the_openapi_document_is_in_the_table(tenants: Tenants) -> None:
    routes = openapi_routes(tenants.app)
    assert routes == set(bodies(tenants.a)) | WITHOUT_KEY | ADMIN_ROUTES


async def test_for_a_key_of_app_b_every_resource_of_app_a_does_not_exist(
    tenants: Tenants,
) -> None:
    a, never = tenants.a, tenants.b_never
    routes = bodies(a)
    # First what reads, stops or deletes a thing by its name, before B has written
    # anything: B's answer on A's names is B's answer on names nothing ever had.
    finds = [r for r in routes if r[0] in ("GET", "DELETE") or r[1].endswith("/cancel")]
    # Then what writes: on A's names B makes B's own things (the same answer as on new
    # names), and A's stay as they were (checked below with A's key). A Live Activity is
    # made by its first token or update: on A's activity B's token is a new one of a new
    # activity of B's (201, not A's row updated: 200), and B's update counts none of A's
    # priority-10 updates.
    writes = [r for r in routes if r not in finds]
    async with tenants.client("b") as b:
        for method, path in finds:
            unknown = await b.request(method, _url(path, never), json=routes[method, path])
            on_a = await b.request(method, _url(path, a), json=routes[method, path])
            where = f"{method} {path}"
            assert on_a.status_code == unknown.status_code, (where, on_a.text, unknown.text)
            assert _normalised(on_a.text, a) == _normalised(unknown.text, never), where
            if "{" in path and "mutes" not in path and "subscri" not in path:
                assert on_a.status_code == 404, (where, on_a.text)  # nothing by that name
            _holds_nothing_of(_normalised(on_a.text, a), a)
        caps = await b.get("/v1/frequency-caps")
        assert caps.status_code == 200 and caps.json() == []
        for method, path in writes:
            unknown = await b.request(method, _url(path, never), json=bodies(never)[method, path])
            on_a = await b.request(method, _url(path, a), json=routes[method, path])
            where = f"{method} {path}"
            assert on_a.status_code == unknown.status_code, (where, on_a.text, unknown.text)
            if path.endswith("/updates"):
                assert on_a.json()["priority_10_last_hour"] == 1, on_a.text
                assert unknown.json()["priority_10_last_hour"] == 1, unknown.text
        # The device B registered with A's token is B's own, not A's moved to B.
        again = await b.post("/v1/devices", json=routes[("POST", "/v1/devices")])
        assert again.status_code == 200 and again.json()["id"] != a.device_id

    # A's resources are as A left them, and A's key finds each one.
    async with tenants.client("a") as client:
        status = await client.get(f"/v1/events/{a.event_id}")
        assert status.status_code == 200 and status.json()["status"] == "scheduled"
        preferences = await client.get(f"/v1/users/{a.user}/preferences")
        assert preferences.status_code == 200, preferences.text
        assert preferences.json()["time_zone"] == "Europe/Berlin"
        assert preferences.json()["opted_out"] is False
        assert [m["topic"] for m in preferences.json()["mutes"]] == [a.topic]
        tags = await client.get(f"/v1/users/{a.user}/tags")
        assert tags.status_code == 200 and tags.json()["tags"] == {"plan": "premium"}, tags.text
        listed = await client.get(f"/v1/users/{a.user}/subscriptions")
        assert [s["topic"] for s in listed.json()["items"]] == [a.topic]
        # A's import finds A's user and A's subscription: already there, unchanged.
        imported = await client.post(
            "/v1/imports/subscriptions", json={"topic": a.topic, "user_id": a.user}
        )
        assert imported.status_code == 200, imported.text
        assert (imported.json()["unchanged"], imported.json()["rejected"]) == (1, 0)
        caps = await client.get("/v1/frequency-caps")
        assert [(c["category"], c["max"]) for c in caps.json()] == [(a.category, 2)]
        # A's activity holds A's token alone (registered again: its row, 200) and A's
        # updates alone (this one and the first: 2 priority-10 updates this hour).
        token = bodies(a)[("POST", "/v1/live-activities/{activity_id}/tokens")]
        again = await client.post(f"/v1/live-activities/{a.activity}/tokens", json=token)
        assert again.status_code == 200, again.text
        update = bodies(a)[("POST", "/v1/live-activities/{activity_id}/updates")]
        updated = await client.post(f"/v1/live-activities/{a.activity}/updates", json=update)
        assert updated.status_code == 202 and updated.json()["priority_10_last_hour"] == 2
        cancelled = await client.post(f"/v1/events/{a.event_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        hook = await client.get(f"/v1/webhooks/{a.webhook_id}")
        # A's test delivery, and the event.finished of A's event, cancelled above: nothing
        # of B's, nor any delivery B's own endpoint was given.
        deliveries = [(d["id"], d["kind"]) for d in hook.json()["deliveries"]]
        assert hook.status_code == 200 and deliveries[-1] == (a.delivery_id, "webhook.test")
        assert [kind for _, kind in deliveries] == ["event.finished", "webhook.test"]
        assert "secret" not in hook.text and "whsec_" not in hook.text
        assert (await client.delete(f"/v1/webhooks/{a.webhook_id}")).status_code == 204
        assert (await client.delete(f"/v1/devices/{a.device_id}")).status_code == 204
        assert (await client.delete(f"/v1/frequency-caps/{a.category}")).status_code == 204


async def test_admin_routes_refuse_app_keys_and_app_routes_refuse_admin_keys(
    tenants: Tenants,
) -> None:
    a = tenants.a
    parameters = {
        "app": "alpha-app",
        "provider": "apns",
        "key_id": "0123456789ab",
        "prefix": "author:",
    }
    for key in ("a", "b"):
        async with tenants.client(key) as client:
            for method, path in sorted(ADMIN_ROUTES):
                answer = await client.request(method, path.format(**parameters), json={})
                assert answer.status_code == 403, (key, method, path, answer.text)
                _holds_nothing_of(answer.text, a)
    async with tenants.client("admin") as admin:
        for method, path in sorted(bodies(a)):
            answer = await admin.request(method, _url(path, a), json=bodies(a)[method, path])
            assert answer.status_code == 403, (method, path, answer.text)
            _holds_nothing_of(answer.text, a)
        listed = await admin.get("/v1/apps")
        assert {"alpha-app", "beta-app", "default"} <= {x["key"] for x in listed.json()}
        # An admin key manages every app: one app's key is never made one.
        refused = await admin.post(
            "/v1/apps/alpha-app/keys", json={"scopes": ["admin"], "name": "a's own admin"}
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "scopes"]
        assert "only to a key of 'default'" in refused.json()["detail"][0]["msg"]
    async with tenants.client() as anonymous:
        for method, path in sorted(ADMIN_ROUTES):
            answer = await anonymous.request(method, path.format(**parameters), json={})
            assert answer.status_code == 401, (method, path)


# The console's pages (not in the OpenAPI document): each with the names it is asked on.
CONSOLE_PAGES = {
    ("GET", "/console"): "/console?topic={topic}",
    ("GET", "/console/events/rows"): "/console/events/rows?topic={topic}",
    ("GET", "/console/events/{event_id}"): "/console/events/{event_id}",
    ("GET", "/console/events/{event_id}/live"): "/console/events/{event_id}/live",
    ("GET", "/console/events/{event_id}/throughput.json"): (
        "/console/events/{event_id}/throughput.json"
    ),
    ("POST", "/console/events/{event_id}/cancel"): "/console/events/{event_id}/cancel",
    ("GET", "/console/where"): "/console/where?event={event_id}&user={user_id}",
    ("GET", "/console/queues"): "/console/queues",
    ("POST", "/console/queues/{role}/redrive"): "/console/queues/fanout/redrive",
    # Switching app: an admin's session only; B's, as for an app that never was, 404
    # (tests/console/test_app_switcher.py switches to A's app by name).
    ("POST", "/console/app"): "/console/app",
    ("GET", "/console/webhooks"): "/console/webhooks",
    ("POST", "/console/webhooks/{webhook_id}/replay"): "/console/webhooks/{webhook_id}/replay",
    ("POST", "/console/webhooks/deliveries/{delivery_id}/replay"): (
        "/console/webhooks/deliveries/{delivery_id}/replay"
    ),
}
# Sign-in and out: no app's data either way.
CONSOLE_SESSION_ROUTES = {
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("POST", "/console/logout"),
}


def console_routes() -> set[tuple[str, str]]:
    """Every route of the console's router (what `console.install` serves)."""
    return {
        (method, route.path)
        for route in console_pages.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
        if method != "HEAD"
    }


async def test_every_console_page_shows_app_b_nothing_of_app_a(tenants: Tenants) -> None:
    a, never = tenants.a, tenants.b_never
    assert console_routes() == set(CONSOLE_PAGES) | CONSOLE_SESSION_ROUTES
    async with tenants.console("b") as b:
        page = await b.get("/console")
        csrf = form_token(page.text) if 'name="csrf_token"' in page.text else ""
        for (method, _), url in CONSOLE_PAGES.items():
            data = {"csrf_token": csrf} if method == "POST" else None
            unknown = await b.request(
                method, url.format(**never.path_parameters()), data=data, headers=_csrf(csrf)
            )
            on_a = await b.request(
                method, url.format(**a.path_parameters()), data=data, headers=_csrf(csrf)
            )
            assert on_a.status_code == unknown.status_code, (url, on_a.text[:300])
            assert _normalised(on_a.text, a) == _normalised(unknown.text, never), url
            _holds_nothing_of(_normalised(on_a.text, a), a)
        events = await b.get("/console")
        assert events.status_code == 200 and f"title of {a.user}" not in events.text
    async with tenants.console("a") as client:
        mine = await client.get(f"/console/events/{a.event_id}")
        assert mine.status_code == 200 and f"title of {a.user}" in mine.text
        listed = await client.get("/console")
        assert f"title of {a.user}" in listed.text
        where = await client.get(f"/console/where?event={a.event_id}&user={a.user}")
        assert where.status_code == 200 and "no user" not in where.text
        hooks = await client.get("/console/webhooks")
        assert hooks.status_code == 200 and f'data-webhook="{a.webhook_id}"' in hooks.text
        assert f'data-delivery="{a.delivery_id}"' in hooks.text and "whsec_" not in hooks.text


def _csrf(token: str) -> dict[str, str]:
    return {"X-CSRF-Token": token} if token else {}


async def test_a_live_activity_update_of_app_a_does_not_exist_for_a_key_of_app_b(
    tenants: Tenants,
) -> None:
    """Activity ids are per app: B's update on A's activity id is an update of B's own
    activity (none of A's tokens), and A's update, read or cancelled by its event id with
    B's key, answers as an event that never existed."""
    a, never = tenants.a, tenants.b_never
    update = {"event": "update", "content_state": {"score": "1-0"}}
    async with tenants.client("a") as client:
        of_a = await client.post(f"/v1/live-activities/{a.activity}/updates", json=update)
        assert of_a.status_code == 202, of_a.text
        a_event = of_a.json()["event_id"]
    async with tenants.client("b") as b:
        for method, suffix in (("GET", ""), ("POST", "/cancel")):
            on_a = await b.request(method, f"/v1/events/{a_event}{suffix}")
            unknown = await b.request(method, f"/v1/events/{never.event_id}{suffix}")
            assert on_a.status_code == unknown.status_code == 404, (suffix, on_a.text)
            assert on_a.json() == unknown.json()
        of_b = await b.post(f"/v1/live-activities/{a.activity}/updates", json=update)
        assert of_b.status_code == 202, of_b.text
        b_event = of_b.json()["event_id"]
        # B's activity has no token at all: its update's status is B's, holding none of A's.
        status = await b.get(f"/v1/events/{b_event}")
        assert status.status_code == 200, status.text
        _holds_nothing_of(status.text.replace(a.activity, "<name>"), a)
    async with tenants.client("a") as client:
        # A's key finds A's update (its activity's status) and not B's.
        mine = await client.get(f"/v1/events/{a_event}")
        assert mine.status_code == 200 and mine.json()["live_activity"] is not None, mine.text
        theirs = await client.get(f"/v1/events/{b_event}")
        assert theirs.status_code == 404, theirs.text
    # Each app's updates are counted under its own key (the operator's /metrics needs none).
    async with tenants.client() as operator:
        scraped = (await operator.get("/metrics")).text
    published = [line for line in scraped.splitlines() if "events_published" in line]
    for app in ("alpha-app", "beta-app"):
        assert f'fanout_events_published_total{{app="{app}",kind="live_activity"}}' in scraped, (
            published
        )
