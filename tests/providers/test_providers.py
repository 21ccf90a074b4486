"""APNs, FCM and Web Push against local servers that check what the real services check."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from fanout.config import Settings
from fanout.local.emulators.fcm import fcm_error
from fanout.local.emulators.stack import LocalPushServices
from fanout.metrics import PROVIDER_CONFIG_ERRORS
from fanout.notification import LocalizedText, Notification, render
from fanout.providers import OutcomeKind, build_providers
from fanout.providers.apns import ApnsProvider
from fanout.providers.fcm import FcmProvider
from fanout.providers.transport import AdaptiveLimit
from fanout.providers.webpush import WebPushProvider, webpush_payload
from fanout.queue.messages import DeliveryBatch, Device
from fanout.runtime.pipeline import Pipeline
from fanout.stages.delivery import deliver_batch
from fanout.stages.fanout import plan_event
from fanout.stages.progress import load_event_status
from fanout.stages.publish import record_event
from fanout.store import events
from tests.helpers import batches_of, drain
from tests.providers.conftest import add_devices

NOTE = Notification(
    title="New book",
    body="Out today",
    data={"book_id": "42"},
    url="https://books.example.com/b/42",
    localized={"de": LocalizedText(title="Neues Buch")},
)


async def fan_out(pipeline: Pipeline, topic: str) -> tuple[int, list[DeliveryBatch]]:
    event = await record_event(pipeline.pool, NOTE, topic=topic)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    return event.event_id, batches_of(await drain(pipeline.queues.delivery))


async def deliver_all(pipeline: Pipeline, batches: list[DeliveryBatch]) -> None:
    for batch in batches:
        await deliver_batch(
            batch, pipeline.pool, pipeline.queues, pipeline.providers, pipeline.settings
        )


async def active(pipeline: Pipeline, ids: list[int]) -> set[int]:
    async with pipeline.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id FROM devices WHERE id = ANY($1) AND active", ids)
    return {r["id"] for r in rows}


# --- each protocol, spoken as the real service expects ---------------------------------


async def test_apns_jwt_verifies_and_is_reused_across_requests(
    push_pipeline: Pipeline, services: LocalPushServices
) -> None:
    topic, _ids, _tokens = await add_devices(push_pipeline.pool, services, "apns", 60)
    _, batches = await fan_out(push_pipeline, topic)
    await deliver_all(push_pipeline, batches)

    apns = push_pipeline.providers["apns"]
    assert isinstance(apns, ApnsProvider)
    assert services.apns.ledger.unique == 60
    assert len(services.apns.jwts_seen) == 1  # one JWT for every request: verified, reused
    assert apns.jwts_signed == 1


async def test_fcm_token_is_fetched_once_for_many_sends(
    push_pipeline: Pipeline, services: LocalPushServices
) -> None:
    topic, _ids, _tokens = await add_devices(push_pipeline.pool, services, "fcm", 60)
    _, batches = await fan_out(push_pipeline, topic)
    await deliver_all(push_pipeline, batches)
    await deliver_all(push_pipeline, (await fan_out(push_pipeline, topic))[1])

    fcm = push_pipeline.providers["fcm"]
    assert isinstance(fcm, FcmProvider)
    # Two events to the same 60 devices: 120 first deliveries, none twice.
    assert (services.fcm.ledger.unique, services.fcm.ledger.duplicates) == (120, 0)
    assert services.fcm.token_requests == 1 and fcm.tokens_fetched == 1


async def test_web_push_payload_decrypts_to_the_exact_notification_json(
    push_pipeline: Pipeline, services: LocalPushServices
) -> None:
    services.webpush.keep_payloads = True
    topic, _ids, _tokens = await add_devices(push_pipeline.pool, services, "webpush", 5)
    event_id, batches = await fan_out(push_pipeline, topic)
    await deliver_all(push_pipeline, batches)

    expected = webpush_payload(render(NOTE, "en", collapse_key=str(event_id)))
    assert len(services.webpush.payloads) == 5
    for payload in services.webpush.payloads:  # decrypted by http_ece in the emulator
        assert payload == orjson.dumps(expected)
        assert orjson.loads(payload)["title"] == "New book"


async def test_web_push_to_a_service_that_speaks_only_http1_over_tls(
    push_pipeline: Pipeline, services: LocalPushServices
) -> None:
    """Some push services still speak only HTTP/1.1: ALPN says so, the provider sends over
    a keep-alive pool for that origin, and every push arrives once, decrypted."""
    from fanout.local.emulators.serve import serve_tls
    from fanout.local.emulators.webpush import WebPushEmulator

    emulator = WebPushEmulator(private_key=services.webpush.private_key, auth=services.webpush.auth)
    emulator.keep_payloads = True
    webpush = push_pipeline.providers["webpush"]
    assert isinstance(webpush, WebPushProvider)
    async with serve_tls(emulator, services.certificates, protocols=("http/1.1",)) as url:
        emulator.base_url = url
        http1_only = dataclasses.replace(services, webpush_endpoint_base=f"{url}/wp/")
        topic, ids, _tokens = await add_devices(push_pipeline.pool, http1_only, "webpush", 30)
        event_id, batches = await fan_out(push_pipeline, topic)
        await deliver_all(push_pipeline, batches)
        assert url in webpush.client._http1  # remembered for this origin
        await webpush.client.aclose()  # hypercorn waits for kept-alive connections to close

    assert (emulator.ledger.unique, emulator.ledger.duplicates) == (30, 0)
    expected = orjson.dumps(webpush_payload(render(NOTE, "en", collapse_key=str(event_id))))
    assert emulator.payloads == [expected] * 30
    async with push_pipeline.pool.acquire() as conn:
        progress = await conn.fetchrow(events.EVENT_PROGRESS, event_id)
    assert (progress["sent"], progress["failed"]) == (30, 0)
    assert await active(push_pipeline, ids) == set(ids)


async def test_a_push_service_that_cannot_be_spoken_to_fails_its_devices_at_once(
    push_pipeline: Pipeline, services: LocalPushServices, tmp_path: Any
) -> None:
    """A Web Push endpoint whose certificate no CA we trust vouches for: its devices fail
    permanently with the reason, at the first try, and no retry batch is queued (retrying
    cannot change it); the devices are not deactivated."""
    import ssl

    from fanout.local.emulators.tls import make_test_ca

    stranger = make_test_ca(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(stranger.cert_file, stranger.key_file)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        elsewhere = dataclasses.replace(services, webpush_endpoint_base=f"{url}/wp/")
        topic, ids, _tokens = await add_devices(push_pipeline.pool, elsewhere, "webpush", 4)
        event_id, batches = await fan_out(push_pipeline, topic)
        await deliver_all(push_pipeline, batches)
    finally:
        server.close()
    assert await drain(push_pipeline.queues.delivery) == []  # nothing to retry
    async with push_pipeline.pool.acquire() as conn:
        progress = await conn.fetchrow(events.EVENT_PROGRESS, event_id)
    assert (progress["sent"], progress["failed"], progress["invalid"]) == (0, 4, 0)
    [(reason, count)] = progress["failure_reasons"].items()
    assert "certificate refused" in reason and count == 4
    assert await active(push_pipeline, ids) == set(ids)


def test_apns_payload_carries_alert_data_and_link() -> None:
    from fanout.providers.apns import apns_payload

    payload = apns_payload(render(NOTE, "de", collapse_key="7"))
    assert payload["aps"]["alert"] == {"title": "Neues Buch", "body": "Out today"}
    assert payload["book_id"] == "42" and payload["url"] == "https://books.example.com/b/42"


# --- every error class leads to the right outcome ----------------------------------------


@pytest.mark.parametrize(
    ("platform", "status", "body"),
    [
        ("apns", 410, {"reason": "Unregistered"}),
        ("apns", 400, {"reason": "BadDeviceToken"}),
        ("fcm", 404, fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")),
        ("fcm", 400, fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token")),
        ("webpush", 410, {}),
        ("webpush", 404, {}),
    ],
)  # fmt: skip
async def test_an_invalid_token_deactivates_only_that_device(
    push_pipeline: Pipeline,
    services: LocalPushServices,
    platform: str,
    status: int,
    body: dict,  # type: ignore[type-arg]
) -> None:
    topic, ids, tokens = await add_devices(push_pipeline.pool, services, platform, 4)
    getattr(services, platform).answer_with(tokens[0], status, body)
    _, batches = await fan_out(push_pipeline, topic)
    await deliver_all(push_pipeline, batches)
    assert await active(push_pipeline, ids) == set(ids[1:])


@pytest.mark.parametrize(
    ("platform", "status", "body", "headers"),
    [
        ("apns", 503, {"reason": "ServiceUnavailable"}, {}),
        ("apns", 429, {"reason": "TooManyRequests"}, {}),
        ("fcm", 503, fcm_error(503, "UNAVAILABLE", "try later"), {}),
        ("fcm", 429, fcm_error(429, "RESOURCE_EXHAUSTED", "quota", "QUOTA_EXCEEDED"), {"retry-after": "1"}),
        ("webpush", 503, {}, {}),
        ("webpush", 429, {}, {"retry-after": "1"}),
    ],
)  # fmt: skip
async def test_a_retryable_answer_is_re_enqueued_and_then_delivered(
    push_pipeline: Pipeline,
    services: LocalPushServices,
    platform: str,
    status: int,
    body: dict,  # type: ignore[type-arg]
    headers: dict[str, str],
) -> None:
    topic, ids, tokens = await add_devices(push_pipeline.pool, services, platform, 4)
    emulator = getattr(services, platform)
    emulator.answer_with(tokens[0], status, body, times=1, headers=headers)
    _event_id, batches = await fan_out(push_pipeline, topic)
    await deliver_all(push_pipeline, batches)

    [retry] = batches_of(await drain(push_pipeline.queues.delivery, at_least=1))
    assert [d.token for d in retry.iter_devices()] == [
        t if platform != "webpush" else f"{services.webpush_endpoint_base}{t}" for t in tokens[:1]
    ]
    await deliver_all(push_pipeline, [retry])
    assert emulator.ledger.unique == 4 and emulator.ledger.duplicates == 0
    assert await active(push_pipeline, ids) == set(ids)


class BreakerClock:
    """The breakers' clock in these tests: it stands still until ``cool_down`` moves it,
    so a cool-down ends when the test says, never while a loaded machine is still getting
    a batch's answers in (a probe more than the test counts)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def breaker_pipeline(push_settings: Settings, **update: Any) -> AsyncIterator[Pipeline]:
    """A pipeline whose breakers cool down in half a second of a ``BreakerClock`` (held
    batches come back after SQS's shortest delay, 1 s)."""
    from fanout.queue.admin import create_queues
    from fanout.queue.sqs import open_client

    settings = push_settings.model_copy(update={"breaker_cooldown_seconds": 0.5, **update})
    async with open_client(settings) as client:
        await create_queues(client, settings)
    async with Pipeline.open(settings) as pipeline:
        clock = BreakerClock()
        for provider in pipeline.providers.values():
            provider.breakers.clock = clock  # type: ignore[attr-defined]
        yield pipeline


def cool_down(pipeline: Pipeline) -> None:
    """The breakers' cool-down passes (a ``breaker_pipeline``'s)."""
    provider = next(iter(pipeline.providers.values()))
    provider.breakers.clock.now += pipeline.settings.breaker_cooldown_seconds  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A push service refusing fanout's own credential, as each one does."""

    platform: str
    refuse: Callable[[LocalPushServices], None]
    accept: Callable[[LocalPushServices], None]
    refused: Callable[[LocalPushServices], int]  # the requests it refused so far
    reason: str  # the config error the held devices show (with the service's address)


def _set(service: str, attribute: str, value: object) -> Callable[[LocalPushServices], None]:
    return lambda services: setattr(getattr(services, service), attribute, value)


def _count(service: str, attribute: str) -> Callable[[LocalPushServices], int]:
    return lambda services: int(getattr(getattr(services, service), attribute))


REFUSALS = {
    # Apple refusing the signing key (a revoked .p8 key).
    "apns signing key revoked": Refusal(
        "apns",
        _set("apns", "refuse_credential", "InvalidProviderToken"),
        _set("apns", "refuse_credential", None),
        _count("apns", "refused"),
        "apns config: 403 InvalidProviderToken",
    ),
    # FCM refusing the OAuth access token the service account was given.
    "fcm access token refused (401)": Refusal(
        "fcm",
        _set("fcm", "refuse_credential", 401),
        _set("fcm", "refuse_credential", None),
        _count("fcm", "refused"),
        "fcm config: 401 UNAUTHENTICATED",
    ),
    # The service account lacks the permission to send for the project.
    "fcm permission denied (403)": Refusal(
        "fcm",
        _set("fcm", "refuse_credential", 403),
        _set("fcm", "refuse_credential", None),
        _count("fcm", "refused"),
        "fcm config: 403 PERMISSION_DENIED",
    ),
    # Google's token endpoint refusing the service account's key (deleted): no access token.
    "fcm service account refused by the token endpoint": Refusal(
        "fcm",
        _set("fcm", "refuse_service_account", True),
        _set("fcm", "refuse_service_account", False),
        _count("fcm", "refused_assertions"),
        "fcm config: cannot get an access token: RefreshError",
    ),
    # A push service refusing the VAPID key.
    "webpush vapid key refused (401)": Refusal(
        "webpush",
        _set("webpush", "refuse_vapid", 401),
        _set("webpush", "refuse_vapid", None),
        _count("webpush", "refused"),
        "webpush config: 401 from {webpush}",
    ),
    "webpush vapid key refused (403)": Refusal(
        "webpush",
        _set("webpush", "refuse_vapid", 403),
        _set("webpush", "refuse_vapid", None),
        _count("webpush", "refused"),
        "webpush config: 403 from {webpush}",
    ),
}


def config_errors(provider: str) -> float:
    """The provider's config errors, every app's (the label is the app's key, or empty)."""
    return sum(
        sample.value
        for metric in PROVIDER_CONFIG_ERRORS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["provider"] == provider
    )


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
async def test_a_refused_credential_costs_one_request_then_every_device_is_delivered_once(
    push_settings: Settings,
    services: LocalPushServices,
    caplog: pytest.LogCaptureFixture,
    refusal: Refusal,
) -> None:
    """A push service refusing fanout's credential gets one request per cool-down, not one
    per device; nothing is deactivated or failed, the event shows the devices held back,
    and once the credential is accepted every device gets its push exactly once."""
    platform, emulator = refusal.platform, getattr(services, refusal.platform)
    reason = refusal.reason.format(webpush=urlsplit(services.webpush.base_url).netloc)
    refusal.refuse(services)
    before = config_errors(platform)
    async with breaker_pipeline(push_settings) as pipeline:
        devices = 40
        topic, ids, _tokens = await add_devices(pipeline.pool, services, platform, devices)
        event_id, batches = await fan_out(pipeline, topic)
        assert len(batches) == 1
        with caplog.at_level(logging.INFO):
            await deliver_all(pipeline, batches)
        assert refusal.refused(services) == 1  # not 40
        status = await load_event_status(pipeline.pool, event_id)
        assert status is not None
        assert status.held_by_breaker == {reason: devices}
        assert (status.pending, status.failed, status.invalid) == (devices, 0, 0)
        assert not status.terminal
        assert await active(pipeline, ids) == set(ids)  # no token blamed
        held_lines = [r for r in caplog.records if "held back" in r.getMessage()]
        assert len(held_lines) == 2  # the breaker opening, and the batch: not one per device

        # Still refused after the cool-down: the held batch's probe is the one request.
        [held] = batches_of(await drain(pipeline.queues.delivery, at_least=1))
        assert held.key.endswith("/h1") and held.attempt == 0  # no delivery attempt spent
        cool_down(pipeline)
        await deliver_all(pipeline, [held])
        assert refusal.refused(services) == 2

        # The credential is accepted again: the next probe goes through, closing the breaker.
        refusal.accept(services)
        [held_again] = batches_of(await drain(pipeline.queues.delivery, at_least=1))
        assert held_again.key.endswith("/h2")
        cool_down(pipeline)
        await deliver_all(pipeline, [held_again])
        status = await load_event_status(pipeline.pool, event_id)
    assert status is not None
    assert (status.status, status.sent, status.failed) == ("delivered", devices, 0)
    assert status.held_by_breaker == {}
    assert emulator.ledger.unique == devices and emulator.ledger.duplicates == 0
    assert refusal.refused(services) == 2
    assert config_errors(platform) - before == 2


async def test_an_fcm_access_token_refused_after_working_is_replaced_not_held(
    push_settings: Settings, services: LocalPushServices
) -> None:
    """An access token FCM accepted and now refuses (401: it expired early or was revoked)
    says nothing against the service account: a fresh token is fetched once and each
    request sent again with it; no device is held back for a cool-down."""
    async with breaker_pipeline(push_settings) as pipeline:
        topic, _ids, _tokens = await add_devices(pipeline.pool, services, "fcm", 40)
        first, batches = await fan_out(pipeline, topic)
        await deliver_all(pipeline, batches)
        services.fcm.revoke_access_tokens()
        second, batches = await fan_out(pipeline, topic)
        await deliver_all(pipeline, batches)
        statuses = [await load_event_status(pipeline.pool, e) for e in (first, second)]
    for status in statuses:
        assert status is not None
        assert (status.status, status.sent, status.held_by_breaker) == ("delivered", 40, {})
    assert (services.fcm.ledger.unique, services.fcm.ledger.duplicates) == (80, 0)
    assert services.fcm.token_requests == 2  # one fresh token, not one per request


async def test_a_service_account_refused_while_its_token_is_renewed_costs_one_token_request(
    push_settings: Settings, services: LocalPushServices
) -> None:
    """The access token refused and the key behind it deleted, with 40 requests in flight:
    the senders waiting for the one renewal take its refusal as theirs instead of each
    asking the token endpoint again; the devices are held, then all delivered once."""
    # The cool-down does not pass while the 40 answers come in, however long they take.
    async with breaker_pipeline(push_settings) as pipeline:
        topic, _ids, _tokens = await add_devices(pipeline.pool, services, "fcm", 40)
        await deliver_all(pipeline, (await fan_out(pipeline, topic))[1])  # the breaker closes
        services.fcm.revoke_access_tokens()
        services.fcm.refuse_service_account = True
        event_id, batches = await fan_out(pipeline, topic)
        await deliver_all(pipeline, batches)
        assert services.fcm.refused_assertions == 1  # not one per request in flight
        status = await load_event_status(pipeline.pool, event_id)
        assert status is not None and status.held_by_breaker == {
            "fcm config: cannot get an access token: RefreshError": 40
        }

        services.fcm.refuse_service_account = False
        [held] = batches_of(await drain(pipeline.queues.delivery, at_least=1))
        cool_down(pipeline)
        await deliver_all(pipeline, [held])
        status = await load_event_status(pipeline.pool, event_id)
    assert status is not None and (status.status, status.sent) == ("delivered", 40)
    assert (services.fcm.ledger.unique, services.fcm.ledger.duplicates) == (80, 0)


async def test_fcm_sender_id_mismatch_retires_the_token_not_the_credential(
    push_pipeline: Pipeline, services: LocalPushServices
) -> None:
    """SENDER_ID_MISMATCH (403) says the token was registered for another sender, a
    Firebase project fanout does not send for (Google's ErrorCode reference: "the
    existing registration tokens won't work"): once the credential has had a push
    accepted, that device is retired, and the credential, which every other device
    accepts, is not held back."""
    accepted, _ids, _tokens = await add_devices(push_pipeline.pool, services, "fcm", 1)
    await deliver_all(push_pipeline, (await fan_out(push_pipeline, accepted))[1])
    topic, ids, tokens = await add_devices(push_pipeline.pool, services, "fcm", 6)
    services.fcm.other_sender_tokens.update(tokens[:2])
    event_id, batches = await fan_out(push_pipeline, topic)
    await deliver_all(push_pipeline, batches)

    status = await load_event_status(push_pipeline.pool, event_id)
    assert status is not None
    assert (status.status, status.sent, status.invalid, status.pending) == ("delivered", 4, 2, 0)
    assert status.held_by_breaker == {}
    assert services.fcm.ledger.unique == 1 + 4
    assert await active(push_pipeline, ids) == set(ids[2:])


@pytest.mark.parametrize("platform", ["apns", "fcm"])
async def test_a_credential_not_of_the_apps_tokens_retires_none_of_them(
    push_pipeline: Pipeline, services: LocalPushServices, platform: str
) -> None:
    """A bundle id (APNs) or a Firebase project (FCM) that is not the app's: the service
    blames every token for being another app's (400 DeviceTokenNotForTopic, 403
    SENDER_ID_MISMATCH). Before any push with the credential was accepted that is not
    taken as the tokens' word: every device is tried again and ends failed with the reason,
    none retired, so fixing the credential and sending again reaches them all. (Before,
    every device of the app was retired.)"""
    topic, ids, tokens = await add_devices(push_pipeline.pool, services, platform, 20)
    if platform == "apns":
        services.apns.token_topics.update({t.lower(): "com.example.another" for t in tokens})
    else:
        services.fcm.other_sender_tokens.update(tokens)
    event_id, batches = await fan_out(push_pipeline, topic)
    for _attempt in range(push_pipeline.settings.delivery_max_attempts + 1):
        await deliver_all(push_pipeline, batches)
        status = await load_event_status(push_pipeline.pool, event_id)
        assert status is not None
        if status.terminal:
            break
        batches = batches_of(await drain(push_pipeline.queues.delivery, at_least=1))
    assert (status.status, status.sent, status.invalid, status.failed) == ("failed", 0, 0, 20)
    [reason] = status.failure_reasons
    assert "before any push was accepted" in reason
    assert await active(push_pipeline, ids) == set(ids)


async def test_a_token_of_another_app_met_first_is_retired_once_the_credential_works(
    push_pipeline: Pipeline, services: LocalPushServices
) -> None:
    """The one stale token that a new credential happens to meet first is tried again, not
    retired at once and not holding the others back: the rest are delivered, and on its
    next try, the credential having worked, it is retired."""
    topic, ids, tokens = await add_devices(push_pipeline.pool, services, "apns", 6)
    services.apns.token_topics[tokens[0].lower()] = "com.example.another"
    event_id, batches = await fan_out(push_pipeline, topic)
    await deliver_all(push_pipeline, batches)
    status = await load_event_status(push_pipeline.pool, event_id)
    assert status is not None and (status.sent, status.invalid) == (5, 0)
    await deliver_all(push_pipeline, batches_of(await drain(push_pipeline.queues.delivery)))
    status = await load_event_status(push_pipeline.pool, event_id)
    assert status is not None
    assert (status.status, status.sent, status.invalid, status.failed) == ("delivered", 5, 1, 0)
    assert await active(push_pipeline, ids) == set(ids[1:])


async def test_fcm_third_party_auth_error_fails_the_ios_devices_and_holds_no_other(
    push_settings: Settings, services: LocalPushServices
) -> None:
    """THIRD_PARTY_AUTH_ERROR (401): the Firebase project has no APNs key (or Web Push
    certificate) that works, so FCM refuses its iOS apps' tokens; the service account is
    not at fault and its Android tokens accept it. The iOS devices fail at once with the
    reason (a config error to fix in Firebase, not the token's: none retired), one request
    each and no new access token; the Android devices are delivered in the same pass, none
    held back (a breaker opened by it held them all, and flapped with each iOS token).
    Four requests in flight, fewer than the batch's devices, as a real batch has."""
    async with breaker_pipeline(push_settings, provider_concurrency=4) as pipeline:
        topic, ids, tokens = await add_devices(pipeline.pool, services, "fcm", 40)
        ios = tokens[1::2]
        services.fcm.ios_tokens.update(ios)
        services.fcm.projects_without_apns_key.add(services.fcm.project_id)
        before = config_errors("fcm")
        event_id, batches = await fan_out(pipeline, topic)
        await deliver_all(pipeline, batches)
        status = await load_event_status(pipeline.pool, event_id)
        assert await active(pipeline, ids) == set(ids)
    assert status is not None
    assert (status.sent, status.failed, status.invalid, status.pending) == (20, 20, 0, 0)
    assert status.held_by_breaker == {}
    assert status.failure_reasons == {
        "fcm config: 401 THIRD_PARTY_AUTH_ERROR: the Firebase project's APNs key or Web "
        "Push certificate": 20
    }
    assert services.fcm.ledger.unique == 20 and services.fcm.ledger.duplicates == 0
    assert services.fcm.requests == 40  # one each
    assert services.fcm.token_requests == 1  # the access token was not the one refused
    assert config_errors("fcm") - before == 20  # alerted on as config errors all the same


async def test_a_404_that_is_not_fcms_unregistered_retires_no_token(
    push_settings: Settings, services: LocalPushServices
) -> None:
    """FCM says a token is dead with a 404 whose FcmError is UNREGISTERED. A 404 without it
    is not about the token: here FANOUT_FCM_ENDPOINT names a path FCM does not serve
    (Google's front end answers its HTML 404 page), and every device would have been
    retired for it. It is a config error: one request, the devices held, none retired."""
    wrong_path = f"{services.fcm.base_url}/fcm"
    async with breaker_pipeline(push_settings, fcm_endpoint=wrong_path) as pipeline:
        topic, ids, _tokens = await add_devices(pipeline.pool, services, "fcm", 20)
        event_id, batches = await fan_out(pipeline, topic)
        await deliver_all(pipeline, batches)
        status = await load_event_status(pipeline.pool, event_id)
        assert await active(pipeline, ids) == set(ids)
    assert status is not None
    assert (status.sent, status.failed, status.invalid, status.pending) == (0, 0, 0, 20)
    assert status.held_by_breaker == {
        "fcm config: 404 from FANOUT_FCM_ENDPOINT: not FCM's send method": 20
    }
    assert services.fcm.requests == 1


async def test_devices_held_too_often_end_failed_with_the_config_error(
    push_settings: Settings, services: LocalPushServices
) -> None:
    """A credential never fixed: after FANOUT_BREAKER_MAX_HOLDS holds the devices count
    failed with the reason, and the event ends."""
    services.apns.refuse_credential = "InvalidProviderToken"
    async with breaker_pipeline(push_settings, breaker_max_holds=1) as pipeline:
        topic, ids, _tokens = await add_devices(pipeline.pool, services, "apns", 5)
        event_id, batches = await fan_out(pipeline, topic)
        await deliver_all(pipeline, batches)
        [held] = batches_of(await drain(pipeline.queues.delivery, at_least=1))
        cool_down(pipeline)
        await deliver_all(pipeline, [held])
        status = await load_event_status(pipeline.pool, event_id)
        assert await active(pipeline, ids) == set(ids)
    assert status is not None
    assert (status.status, status.failed, status.sent) == ("failed", 5, 0)
    assert status.failure_reasons == {"apns config: 403 InvalidProviderToken": 5}
    assert services.apns.refused == 2


async def test_a_held_batch_whose_message_is_lost_is_sent_again_by_the_reconciler(
    push_settings: Settings, services: LocalPushServices
) -> None:
    """Held devices are recorded in PostgreSQL before their message is sent: a worker that
    dies, or a queue that loses the message, costs time, not devices."""
    from fanout.runtime.reconciler import reconcile_once

    services.apns.refuse_credential = "InvalidProviderToken"
    async with breaker_pipeline(push_settings) as pipeline:
        topic, _ids, _tokens = await add_devices(pipeline.pool, services, "apns", 6)
        event_id, batches = await fan_out(pipeline, topic)
        await deliver_all(pipeline, batches)
        assert len(await drain(pipeline.queues.delivery, at_least=1)) == 1  # lost
        services.apns.refuse_credential = None

        report = await reconcile_once(
            pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=3600, event_id=event_id
        )
        assert report.batches_resent == 1
        [resent] = batches_of(await drain(pipeline.queues.delivery, at_least=1))
        assert resent.key.endswith("/h1") and resent.device_ids is not None
        assert resent.published_at is not None  # the latency is still measured from publish
        cool_down(pipeline)
        await deliver_all(pipeline, [resent])
        status = await load_event_status(pipeline.pool, event_id)
    assert status is not None and (status.status, status.sent) == ("delivered", 6)
    assert services.apns.ledger.unique == 6 and services.apns.ledger.duplicates == 0


async def test_an_unconfigured_provider_is_skipped_not_lost(
    settings: Settings, services: LocalPushServices, caplog: pytest.LogCaptureFixture
) -> None:
    only_apns = {k: v for k, v in services.settings.items() if not k.startswith(("fcm", "vapid"))}
    with caplog.at_level(logging.WARNING):
        providers = build_providers(settings.model_copy(update=only_apns))
    assert set(providers) == {"apns", "apns_sandbox"}  # one APNs key, both environments
    assert "fcm is not configured" in caplog.text and "webpush is not configured" in caplog.text
    for provider in providers.values():
        await provider.aclose()


def test_a_429_halves_the_rate_and_it_recovers() -> None:
    limit = AdaptiveLimit(rate=1000, concurrency=10)
    limit.slow_down(None)
    limit.slow_down(None)
    assert limit.rate == 250
    limit._last_change -= 1.5
    limit._recover()
    assert limit.rate == 350


async def test_a_payload_too_large_for_apns_is_permanent_without_a_request(
    push_pipeline: Pipeline, services: LocalPushServices
) -> None:
    apns = push_pipeline.providers["apns"]
    big = render(NOTE, None, collapse_key="1").model_copy(update={"body": "x" * 5000})
    [outcome] = await apns.send(big, [Device(1, "apns", "ab" * 32)])
    assert outcome.kind is OutcomeKind.PERMANENT
    assert services.apns.ledger.received == 0


async def test_web_push_subscription_with_a_broken_key_is_invalid(
    push_pipeline: Pipeline, services: LocalPushServices
) -> None:
    webpush = push_pipeline.providers["webpush"]
    assert isinstance(webpush, WebPushProvider)
    device = Device(1, "webpush", f"{services.webpush_endpoint_base}x", "en", "AAAA", services.auth)
    [outcome] = await webpush.send(render(NOTE, None, collapse_key="1"), [device])
    assert outcome.kind is OutcomeKind.INVALID_TOKEN


@pytest.mark.parametrize("server", ["h2", "hypercorn"])
async def test_goaway_and_a_new_connection_lose_nothing(
    services: LocalPushServices, push_settings: Settings, server: str
) -> None:
    """The server says GOAWAY every 150 requests; all 1,000 pushes still arrive, once.

    Streams GOAWAY excludes are re-sent on a new connection by the client itself. The
    ``h2`` server answers every stream it accepted before closing, as APNs does: nothing
    fails. hypercorn closes the connection as soon as its quota is served, dropping the
    answers to pushes it did deliver (up to the ~500 in flight on that connection): those
    come back as retry ("connection lost"). The client cannot know they arrived; the
    delivery stage re-sends them with the same collapse id, which replaces.
    """
    from fanout.local.emulators.apns import ApnsEmulator
    from fanout.local.emulators.h2server import serve_h2
    from fanout.local.emulators.serve import serve_tls

    emulator = ApnsEmulator(
        public_keys=services.apns.public_keys,
        team_id=services.apns.team_id,
        topic=services.apns.topic,
    )
    async with contextlib.AsyncExitStack() as stack:
        if server == "h2":
            served = serve_h2(emulator, services.certificates, requests_per_connection=150)
            url = (await stack.enter_async_context(served)).url
        else:
            served_tls = serve_tls(emulator, services.certificates, requests_per_connection=150)
            url = await stack.enter_async_context(served_tls)
        providers = build_providers(push_settings.model_copy(update={"apns_endpoint": url}))
        devices = [Device(i, "apns", f"{i:064x}") for i in range(1000)]
        outcomes = await providers["apns"].send(render(NOTE, None, collapse_key="1"), devices)
        for provider in providers.values():
            await provider.aclose()
    assert (emulator.ledger.unique, emulator.ledger.duplicates) == (1000, 0)
    not_ok = [o for o in outcomes if o.kind is not OutcomeKind.OK]
    if server == "h2":
        assert not_ok == []
    assert all(
        o.kind is OutcomeKind.RETRY and "connection lost" in (o.reason or "") for o in not_ok
    )


async def silent_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A push service that takes requests and never answers them."""
    if scope["type"] == "http":
        await asyncio.sleep(3600)


@pytest.mark.parametrize("silence", ["no answer", "no TLS handshake"])
async def test_a_push_service_that_goes_silent_is_retried_after_the_timeout(
    push_settings: Settings, services: LocalPushServices, silence: str
) -> None:
    """A silent service must not hold a batch, and with it the batch's lease and a
    worker slot, for ever: its devices come back as retry after the request timeout."""
    from fanout.local.emulators.serve import serve_tls

    async with contextlib.AsyncExitStack() as stack:
        if silence == "no answer":
            url = await stack.enter_async_context(serve_tls(silent_app, services.certificates))
        else:
            server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            stack.callback(server.close)
            url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        settings = push_settings.model_copy(
            update={"apns_endpoint": url, "provider_request_timeout": 0.5}
        )
        providers = build_providers(settings)
        for provider in providers.values():
            stack.push_async_callback(provider.aclose)
        devices = [Device(i, "apns", f"{i:064x}") for i in range(3)]
        outcomes = await asyncio.wait_for(
            providers["apns"].send(render(NOTE, None, collapse_key="1"), devices), 10
        )
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 3
    expected = "no answer in 0.5s" if silence == "no answer" else "cannot connect"
    assert all(expected in (o.reason or "") for o in outcomes), outcomes


async def test_the_emulators_on_granian_serve_every_provider(settings: Settings) -> None:
    """`fanout emulators` and the benchmarks serve on granian: APNs and Web Push over
    HTTP/2, and FCM's OAuth token endpoint over HTTP/1.1 (google-auth speaks no HTTP/2)."""
    from fanout.local.emulators.stack import local_push_services

    async with local_push_services(server="granian") as services:
        providers = build_providers(settings.model_copy(update=services.settings))
        devices = {
            "apns": Device(1, "apns", "ab" * 32),
            "fcm": Device(2, "fcm", "fcm-1:APA91b" + "x" * 100),
            "webpush": Device(
                3,
                "webpush",
                f"{services.webpush_endpoint_base}1",
                "en",
                services.p256dh,
                services.auth,
            ),
        }
        try:
            for platform, device in devices.items():
                [outcome] = await providers[platform].send(
                    render(NOTE, None, collapse_key="1"), [device]
                )
                assert outcome.kind is OutcomeKind.OK, (platform, outcome)
        finally:
            for provider in providers.values():
                await provider.aclose()


async def test_a_batch_to_a_service_that_cannot_be_reached_comes_back_after_one_wait(
    push_settings: Settings,
) -> None:
    """Each request waits up to its timeout for a connection; once one has waited in vain,
    the rest of the call is not tried (else 2,000 devices over 10 senders would wait 200
    timeouts): every device comes back to be retried, and the service was tried at most
    once per sender."""
    attempts = 0

    def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()  # accepted, then closed before TLS: the service is not there

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    down = push_settings.model_copy(
        update={
            "apns_endpoint": f"https://127.0.0.1:{port}",
            "provider_request_timeout": 1.0,
            "provider_concurrency": 10,
        }
    )
    providers = build_providers(down)
    try:
        devices = [Device(i, "apns", f"{i:064x}") for i in range(2000)]
        outcomes = await asyncio.wait_for(
            providers["apns"].send(render(NOTE, None, collapse_key="1"), devices), 60
        )
    finally:
        for provider in providers.values():
            await provider.aclose()
        server.close()
        await server.wait_closed()
    assert {o.kind for o in outcomes} == {OutcomeKind.RETRY}
    assert attempts <= 10  # one try at a time, shared, each a second or more apart


async def test_a_batch_of_many_locales_is_sent_by_one_set_of_senders(
    push_settings: Settings, services: LocalPushServices
) -> None:
    """A batch's locale groups share the provider's senders: with a concurrency of 4, six
    locales of 10 devices each run 4 senders, not 4 per locale (24), each a task
    (issue #22: small batches of many apps paid a sender per device)."""
    from fanout.stages.delivery import _send_all

    providers = build_providers(push_settings.model_copy(update={"provider_concurrency": 4}))
    apns = providers["apns"]
    assert isinstance(apns, ApnsProvider)
    most = 0
    send_one = apns.send_one

    async def counting(prepared: Any, device: Any) -> Any:
        nonlocal most
        senders = [t for t in asyncio.all_tasks() if ".<locals>.sender" in _qualname(t)]
        most = max(most, len(senders))
        return await send_one(prepared, device)

    apns.send_one = counting  # type: ignore[method-assign]
    locales = ["en", "en-GB", "de", "fr", "pt-BR", "ja"]
    devices = [Device(i, "apns", f"{i:064x}", locales[i % 6]) for i in range(60)]
    try:
        outcomes = await _send_all(NOTE, "7", devices, providers)
    finally:
        for provider in {id(p): p for p in providers.values()}.values():
            await provider.aclose()
    assert [o.kind if o else None for o in outcomes] == [OutcomeKind.OK] * 60
    assert services.apns.ledger.unique == 60
    assert 1 <= most <= 4


def _qualname(task: asyncio.Task[Any]) -> str:
    return str(getattr(task.get_coro(), "__qualname__", ""))
