"""One app's FCM or Web Push credential refused by the service, by the service's own rules,
end to end as test_three_apps.py does it for an APNs key: FCM's token endpoint refusing a
service account key Google deleted, FCM refusing a service account without the permission
to send, and a push service refusing a VAPID key that is not the one its subscriptions were
made with (403 as Google's and Apple's answer, 401 as Mozilla's autopush does; RFC 8292,
4.2). While refused, each cool-down lets one request through (the breaker's probe) and the
app's devices on that platform are held: not failed, not retired; every other device is
delivered. Once the credential is accepted again (a good one set through the admin API, or
the permission granted), every device has its push exactly once, signed by its own app's
credential: none lost, none twice."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fanout.api import create_app
from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.credentials.validation import Credential
from fanout.local.emulators.stack import LocalPushServices
from fanout.runtime.pipeline import Pipeline
from fanout.stages.progress import load_event_status
from tests.helpers import batches_of, drain, run_everything
from tests.providers.three_apps import (
    DEVICES_PER_PLATFORM,
    PLATFORMS,
    App,
    apps_pipeline,
    merged,
    publish_to_each,
    sealing_settings,
    signers,
    three_apps,
)

Admin = Callable[[str, str, dict[str, object]], Awaitable[None]]  # PUT a credential


@pytest.fixture
def app_settings(push_settings: Settings) -> Settings:
    return sealing_settings(push_settings)


@pytest.fixture
async def pipeline(app_settings: Settings) -> AsyncIterator[Pipeline]:
    """Checking the apps' credentials for a change at every batch (60 s by default; that a
    change waits for it is test_app_providers.py's): a credential set through the API is
    the one the next batch sends with, with no wait in the test."""
    async with apps_pipeline(app_settings, refresh_seconds=0) as opened:
        yield opened


@pytest.fixture
async def put_credential(app_settings: Settings, pipeline: Pipeline) -> AsyncIterator[Admin]:
    """``PUT /v1/apps/{app}/credentials/{provider}`` as an operator does, with an admin key."""
    async with pipeline.pool.acquire() as conn:
        _, token = await create_api_key(conn, ["admin"], "operator")
    api = create_app(app_settings)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api),
            base_url="http://admin.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client,
    ):

        async def put(app: str, provider: str, body: dict[str, object]) -> None:
            answer = await client.put(f"/v1/apps/{app}/credentials/{provider}", json=body)
            assert answer.status_code in (200, 201), answer.text

        yield put


def credential_of(app: App, provider: str) -> Credential:
    [found] = [c for c in app.emulated.credentials if c.provider == provider]
    return found


def body_of(credential: Credential) -> dict[str, object]:
    """The API's body for the credential (the operator's file, as given)."""
    if credential.provider == "fcm":
        return {"service_account": orjson.loads(credential.secret)}
    return {
        "vapid_private_key": credential.secret.decode(),
        "subject": credential.identity["subject"],
    }


@dataclass(frozen=True)
class Refusal:
    """How the service comes to refuse the app's credential, and to accept it again."""

    platform: str
    refuse: Callable[[App, LocalPushServices, Admin], Awaitable[None]]
    accept: Callable[[App, LocalPushServices, Admin], Awaitable[None]]
    refused: Callable[[LocalPushServices], int]  # requests the service refused so far
    reason: str  # what the held devices show ({webpush}: the push service's host and port)


async def deleted_service_account_key(app: App, services: LocalPushServices, put: Admin) -> None:
    """The app's service account file, its key one Google deleted (never the account's now)."""
    account = orjson.loads(credential_of(app, "fcm").secret)
    deleted = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    await put(app.row.key, "fcm", {"service_account": {**account, "private_key": deleted.decode()}})


async def good_credential(app: App, services: LocalPushServices, put: Admin, platform: str) -> None:
    await put(app.row.key, platform, body_of(credential_of(app, platform)))


async def new_vapid_key(app: App, services: LocalPushServices, put: Admin) -> None:
    """A new VAPID key generated for the app: its subscriptions were made with the old one."""
    await put(app.row.key, "webpush", {"generate": True, "subject": "mailto:push@example.com"})


def account_of(app: App) -> str:
    return str(orjson.loads(credential_of(app, "fcm").secret)["client_email"])


async def permission_removed(app: App, services: LocalPushServices, put: Admin) -> None:
    services.fcm.without_permission.add(account_of(app))


async def permission_granted(app: App, services: LocalPushServices, put: Admin) -> None:
    services.fcm.without_permission.discard(account_of(app))


def vapid_refused_with(status: int) -> Refusal:
    async def refuse(app: App, services: LocalPushServices, put: Admin) -> None:
        services.webpush.vapid_refusal_status = status
        await new_vapid_key(app, services, put)

    async def accept(app: App, services: LocalPushServices, put: Admin) -> None:
        await good_credential(app, services, put, "webpush")

    return Refusal(
        "webpush",
        refuse,
        accept,
        lambda s: s.webpush.refused,
        f"webpush config: {status} from {{webpush}}",
    )


async def fcm_good_credential(app: App, services: LocalPushServices, put: Admin) -> None:
    await good_credential(app, services, put, "fcm")


REFUSALS = {
    # Google's token endpoint: "Invalid JWT Signature" (400 invalid_grant); no access token.
    "fcm service account key deleted": Refusal(
        "fcm",
        deleted_service_account_key,
        fcm_good_credential,
        lambda s: s.fcm.refused_assertions,
        "fcm config: cannot get an access token: RefreshError",
    ),
    # The account lacks cloudmessaging.messages.create: 403 PERMISSION_DENIED to each send;
    # granted in IAM, nothing changes in fanout.
    "fcm service account without the permission": Refusal(
        "fcm",
        permission_removed,
        permission_granted,
        lambda s: s.fcm.refused,
        "fcm config: 403 PERMISSION_DENIED",
    ),
    "webpush vapid key not the subscriptions' (403)": vapid_refused_with(403),
    "webpush vapid key not the subscriptions' (401, autopush)": vapid_refused_with(401),
}


def accepted(services: LocalPushServices, platform: str) -> int:
    """Pushes the service accepted (counted by the credential that signed them)."""
    return sum(signers(services)[platform].values())


def reached(services: LocalPushServices, platform: str) -> int:
    """Requests that reached the service (FCM: its send method and its token endpoint)."""
    if platform == "fcm":
        return services.fcm.requests + services.fcm.token_requests
    return int(services.webpush.requests)


def is_held(body: str) -> bool:
    """A batch of devices a breaker held back (``<key>/h<n>``)."""
    return any(re.search(r"/h\d+$", batch.key) for batch in batches_of([body]))


async def deliver_held(pipeline: Pipeline, holds: int, set_aside: list[str]) -> None:
    """The held batch (set aside by ``run_everything``, or on the queue once its delay is
    over, the cool-down with it), through the worker's own path."""
    [body] = set_aside or await drain(pipeline.queues.delivery, at_least=1)
    set_aside.clear()
    [held] = batches_of([body])
    assert held.key.endswith(f"/h{holds}")
    await pipeline.handle(body)


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
async def test_one_apps_credential_refused_costs_one_request_per_cool_down_and_loses_nothing(
    pipeline: Pipeline,
    services: LocalPushServices,
    app_settings: Settings,
    put_credential: Admin,
    refusal: Refusal,
) -> None:
    platform = refusal.platform
    reason = refusal.reason.format(webpush=urlsplit(services.webpush.base_url).netloc)
    made = await three_apps(pipeline, services, app_settings)
    refused_app, *others = made
    await refusal.refuse(refused_app, services, put_credential)
    for each in PLATFORMS:
        getattr(services, each).record_signers()

    # Refused from the first push: the app's new provider sends one probe, alone.
    events = await publish_to_each(pipeline, made)
    set_aside = await run_everything(pipeline, set_aside=is_held)
    assert refusal.refused(services) == 1
    not_refused = {p: c for p, c in refused_app.expected_signers(1).items() if p != platform}
    assert signers(services) == merged(*(app.expected_signers(1) for app in others), not_refused)
    # Nothing else reached the service: the other apps' pushes, and the one refused.
    if platform == "fcm":
        assert services.fcm.requests == accepted(services, "fcm") + services.fcm.refused
        assert services.fcm.token_requests == len(made)  # one per app's service account
    else:
        assert services.webpush.requests == accepted(services, "webpush") + 1
    status = await load_event_status(pipeline.pool, events[0])
    assert status is not None
    assert status.held_by_breaker == {reason: DEVICES_PER_PLATFORM}
    assert (status.pending, status.failed, status.invalid) == (DEVICES_PER_PLATFORM, 0, 0)
    assert status.sent == 2 * DEVICES_PER_PLATFORM
    for event_id in events[1:]:
        other = await load_event_status(pipeline.pool, event_id)
        assert other is not None
        assert (other.status, other.sent) == ("delivered", 3 * DEVICES_PER_PLATFORM)

    # Still refused after the cool-down: the held batch's probe is the one request.
    before = reached(services, platform)
    await deliver_held(pipeline, 1, set_aside)
    assert (refusal.refused(services), reached(services, platform) - before) == (2, 1)
    status = await load_event_status(pipeline.pool, events[0])
    assert status is not None and status.held_by_breaker == {reason: DEVICES_PER_PLATFORM}
    async with pipeline.pool.acquire() as conn:
        inactive = await conn.fetchval("SELECT count(*) FROM devices WHERE NOT active")
    assert inactive == 0  # no token blamed for its app's credential

    # Accepted again: the next pass delivers every held device, once.
    await refusal.accept(refused_app, services, put_credential)
    await deliver_held(pipeline, 2, set_aside)
    status = await load_event_status(pipeline.pool, events[0])
    assert status is not None
    assert (status.status, status.sent, status.held_by_breaker) == (
        "delivered",
        3 * DEVICES_PER_PLATFORM,
        {},
    )
    assert refusal.refused(services) == 2
    # Every device of every app: one push, signed by its own app's credential.
    assert signers(services) == merged(*(app.expected_signers(1) for app in made))
    delivered, duplicates = services.delivered()
    assert (delivered, duplicates) == (len(made) * len(PLATFORMS) * DEVICES_PER_PLATFORM, 0)
    assert await drain(pipeline.queues.delivery) == []
