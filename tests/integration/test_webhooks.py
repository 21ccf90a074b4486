"""Webhooks, for real: a receiver on loopback (FANOUT_WEBHOOK_ALLOW_PRIVATE, as in
development) verifies every call's signature with the ``standardwebhooks`` package, an
implementation fanout did not write. Down (connection refused) while an event is sent,
then up: it gets every retired token and the event's final counts, nothing lost, repeats
only with the same webhook-id. A sender SIGKILLed mid-call loses nothing either."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr

from fanout.api import create_app
from fanout.api.keys import create_api_key
from fanout.config import ConfigError, Settings
from fanout.credentials.sealing import Keyring, generate_key
from fanout.credentials.stored import check_secret_key, keyring, rotate
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.open_tokens import OpenTokens
from fanout.runtime.pipeline import Pipeline
from fanout.stages import opens as stages_opens
from fanout.stages.publish import publish, record_event
from fanout.store import connect, lifecycle, webhooks
from fanout.store.apps import DEFAULT_APP_ID
from fanout.webhooks.endpoints import register
from fanout.webhooks.sender import WebhookSender
from tests.faults.conftest import sink_worker
from tests.helpers import run_everything, sink_pipeline, wait_for
from tests.webhook_receiver import Receiver

NOTE = Notification(title="webhooks", body="test")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.down()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "secret_key": SecretStr(generate_key()),
            "webhook_allow_private": True,
            "webhook_retry_base_seconds": 0.2,
            "webhook_timeout_seconds": 5.0,
            "webhook_poll_seconds": 0.1,
        }
    )


@pytest.fixture
async def hook_pipeline(hook_settings: Settings, sink: EmbeddedSink) -> AsyncIterator[Pipeline]:
    async with sink_pipeline(hook_settings, sink.url) as pipeline:
        yield pipeline


async def _register(pipeline: Pipeline, receiver: Receiver, kinds: list[str]) -> int:
    async with pipeline.pool.acquire() as conn:
        endpoint, secret = await register(
            conn,
            app_id=DEFAULT_APP_ID,
            url=receiver.url,
            kinds=kinds,
            keyring=keyring(pipeline.settings),
            resolver=_no_dns,
            allow_private=True,
        )
    receiver.secret = secret
    return endpoint.id


async def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} was resolved: the tests' URLs are addresses")


async def _seed_topic(pipeline: Pipeline, users: int, retired: int) -> tuple[str, set[str]]:
    """A topic of ``users`` subscribers with one APNs device each; the first ``retired``
    tokens are ones the sink answers unregistered (as APNs's 410)."""
    run = secrets.token_hex(4)
    topic = f"hooks:{run}"
    async with pipeline.pool.acquire() as conn, conn.transaction():
        topic_id = await conn.fetchval(
            "INSERT INTO topics (app_id, key) VALUES ($1, $2) RETURNING id", DEFAULT_APP_ID, topic
        )
        await conn.execute(
            """WITH u AS (
                   INSERT INTO users (app_id, external_id)
                   SELECT $1, $2 || '-' || g FROM generate_series(1, $3) AS g
                   RETURNING id, external_id
               ), s AS (INSERT INTO subscriptions (topic_id, user_id) SELECT $4, id FROM u)
               INSERT INTO devices (app_id, user_id, platform, token, locale)
               SELECT $1, id,  'apns',
                      CASE WHEN split_part(external_id, '-', 2)::int <= $5
                           THEN 'invalid-' ELSE 'ok-' END || external_id, 'en'
               FROM u""",
            DEFAULT_APP_ID,
            run,
            users,
            topic_id,
            retired,
        )
    return topic, {f"invalid-{run}-{i}" for i in range(1, retired + 1)}


async def _pending(pipeline: Pipeline) -> int:
    async with pipeline.pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'"
        )
        return count


async def test_receiver_down_then_up_gets_every_retired_token_and_the_final_counts(
    hook_pipeline: Pipeline, sink: EmbeddedSink, receiver: Receiver
) -> None:
    pipeline = hook_pipeline
    await _register(pipeline, receiver, ["event.finished", "devices.retired", "devices.failed"])
    topic, retired = await _seed_topic(pipeline, 20_000, 2_000)
    stopping = asyncio.Event()
    sender = WebhookSender(pipeline.pool, pipeline.settings, keyring(pipeline.settings))
    sending = asyncio.create_task(sender.run(stopping))
    try:
        # The receiver is down (connection refused) while the event is sent.
        event = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic)
        await run_everything(pipeline)
        await wait_for(lambda: _tried_while_down(pipeline), "calls refused while down")
        assert receiver.received == []
        receiver.up()
        await wait_for(lambda: _none_pending(pipeline), "every delivery delivered", timeout=120)
    finally:
        stopping.set()
        await sending

    assert receiver.unverified == []
    by_id = receiver.by_id()
    assert set(by_id) == await _written(pipeline)  # lost: 0
    # Repeats only with the same webhook-id, and then the same body.
    for copies in by_id.values():
        assert len({c.body for c in copies}) == 1
    messages = [copies[0].message for copies in by_id.values()]
    tokens = [
        d["token"] for m in messages if m["type"] == "devices.retired" for d in m["data"]["devices"]
    ]
    assert sorted(tokens) == sorted(retired)  # every one, once (by webhook-id)
    assert all(
        d["reason"] == "sink: unregistered"
        for m in messages
        if m["type"] == "devices.retired"
        for d in m["data"]["devices"]
    )
    finished = [m["data"] for m in messages if m["type"] == "event.finished"]
    assert len(finished) == 1
    assert finished[0]["event_id"] == event.event_id
    assert (finished[0]["sent"], finished[0]["invalid"], finished[0]["failed"]) == (
        18_000,
        2_000,
        0,
    )
    assert finished[0]["status"] == "delivered"
    assert not [m for m in messages if m["type"] == "devices.failed"]
    assert (sink.sink.ledger.unique, sink.sink.ledger.duplicates) == (18_000, 0)


async def _tried_while_down(pipeline: Pipeline) -> bool:
    async with pipeline.pool.acquire() as conn:
        tried: int = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE attempts > 0 AND last_status IS NULL"
            " AND last_answer LIKE 'ConnectError%'"
        )
        return tried > 0


async def _none_pending(pipeline: Pipeline) -> bool:
    return await _pending(pipeline) == 0


async def _written(pipeline: Pipeline) -> set[str]:
    async with pipeline.pool.acquire() as conn:
        rows = await conn.fetch("SELECT webhook_id FROM webhook_deliveries")
    return {row["webhook_id"] for row in rows}


async def test_a_sender_sigkilled_mid_call_loses_no_delivery(
    hook_pipeline: Pipeline, sink: EmbeddedSink, receiver: Receiver, tmp_path: Path
) -> None:
    pipeline = hook_pipeline
    await _register(pipeline, receiver, ["devices.failed"])
    async with pipeline.pool.acquire() as conn, conn.transaction():
        for n in range(200):
            await webhooks.enqueue(
                conn, app_id=DEFAULT_APP_ID, kind="devices.failed", payload={"n": n}
            )
    receiver.hold = threading.Event()  # calls wait: the worker is killed in the middle
    receiver.up()
    settings = pipeline.settings
    assert settings.secret_key is not None
    worker = sink_worker(
        settings,
        "delivery",
        sink.url,
        tmp_path,
        FANOUT_SECRET_KEY=settings.secret_key.get_secret_value(),
        FANOUT_WEBHOOK_ALLOW_PRIVATE="true",
        FANOUT_WEBHOOK_TIMEOUT_SECONDS="2",
        FANOUT_WEBHOOK_CONCURRENCY="16",
    )
    worker.start()
    try:
        await wait_for(receiver.seen.is_set, "the worker's first call", timeout=120)
        assert worker.process is not None
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
    finally:
        if worker.running:
            worker.stop()
    receiver.hold.set()  # the calls in flight reach the receiver: their rows stay claimed
    stopping = asyncio.Event()
    sender = WebhookSender(pipeline.pool, settings, keyring(settings))
    sending = asyncio.create_task(sender.run(stopping))
    try:
        # The killed worker's rows are due again once its lease is over (2 x 2 s + 5 s).
        await wait_for(lambda: _none_pending(pipeline), "every delivery delivered", timeout=120)
    finally:
        stopping.set()
        await sending
    assert receiver.unverified == []
    by_id = receiver.by_id()
    assert set(by_id) == await _written(pipeline)  # lost: 0
    assert sorted(copies[0].message["data"]["n"] for copies in by_id.values()) == list(range(200))
    for copies in by_id.values():
        assert len({c.body for c in copies}) == 1  # a repeat is the same message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/hook", "must be an https:// URL"),
        ("https://10.0.0.1/hook", "10.0.0.1, a private address"),
        ("https://169.254.169.254/latest", "169.254.169.254, the cloud metadata address"),
        ("https://[::1]/hook", "::1, a loopback address"),
        (
            "https://hooks.example.com/in",
            "hooks.example.com resolves to such an address, a loopback",
        ),
    ],
)
async def test_registration_refuses_what_is_not_public_naming_the_url(
    settings: Settings, url: str, why: str
) -> None:
    settings = settings.model_copy(update={"secret_key": SecretStr(generate_key())})
    conn = await connect(settings.database_dsn())
    try:
        token = (await create_api_key(conn, ["manage", "read"], "hooks"))[1]
    finally:
        await conn.close()
    app = create_app(settings)

    async def to_loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client,
    ):
        app.state.api.webhook_resolver = to_loopback
        answer = await client.post("/v1/webhooks", json={"url": url, "kinds": ["event.finished"]})
        assert answer.status_code == 422, answer.text
        [problem] = answer.json()["detail"]
        assert problem["loc"] == ["body", "url"] and why in problem["msg"], problem
        assert (await client.get("/v1/webhooks")).json() == []
        # A public one is taken; its secret is in this answer and no other.
        made = await client.post(
            "/v1/webhooks", json={"url": "https://93.184.215.14/in", "kinds": ["devices.retired"]}
        )
        assert made.status_code == 201 and made.json()["secret"].startswith("whsec_")
        listed = await client.get("/v1/webhooks")
        assert "whsec_" not in listed.text and listed.json()[0]["state"] == "active"
        unknown = await client.post("/v1/webhooks", json={"url": url, "kinds": ["push.clicked"]})
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"][:2] == [
            "body",
            "kinds",
        ]


async def test_failed_for_good_then_disabled_then_replayed_with_the_same_ids(
    hook_pipeline: Pipeline, receiver: Receiver
) -> None:
    pipeline = hook_pipeline
    endpoint_id = await _register(pipeline, receiver, ["devices.retired"])
    # A retry window and a failing allowance of 0: the first refused call fails the row
    # for good and disables the endpoint (as 24 hours of failures would).
    impatient = pipeline.settings.model_copy(
        update={"webhook_retry_hours": 0.0, "webhook_disable_after_hours": 0.0}
    )
    async with pipeline.pool.acquire() as conn:
        for n in range(3):
            await webhooks.enqueue(
                conn, app_id=DEFAULT_APP_ID, kind="devices.retired", payload={"n": n}
            )
    sender = WebhookSender(pipeline.pool, impatient, keyring(impatient))
    try:
        done = await sender.send_due()  # the receiver is down: connection refused
    finally:
        await sender.aclose()
    assert (done.claimed, done.failed, done.delivered) == (3, 3, 0)
    async with pipeline.pool.acquire() as conn:
        [endpoint] = await webhooks.list_endpoints(conn, app_id=DEFAULT_APP_ID)
        assert endpoint.disabled_at is not None
        # A fact while it is disabled is kept, as failed, for the replay.
        assert (
            await webhooks.enqueue(
                conn, app_id=DEFAULT_APP_ID, kind="devices.retired", payload={"n": 3}
            )
            == 1
        )
        recent = await webhooks.recent_deliveries(
            conn, app_id=DEFAULT_APP_ID, endpoint_id=endpoint_id, limit=10
        )
        assert [d.status for d in recent] == ["failed"] * 4
        assert all(d.last_answer for d in recent)  # the last answer is kept
        ids = {d.webhook_id for d in recent}
        receiver.up()
        assert (
            await webhooks.replay_endpoint(conn, app_id=DEFAULT_APP_ID, endpoint_id=endpoint_id)
            == 4
        )
        [endpoint] = await webhooks.list_endpoints(conn, app_id=DEFAULT_APP_ID)
        assert endpoint.disabled_at is None
    sender = WebhookSender(pipeline.pool, pipeline.settings, keyring(pipeline.settings))
    try:
        assert (await sender.send_due()).delivered == 4
    finally:
        await sender.aclose()
    assert set(receiver.by_id()) == ids and receiver.unverified == []
    # Delivered rows go after FANOUT_WEBHOOK_KEEP_DAYS (7): the outbox stays a week long.
    async with pipeline.pool.acquire() as conn:
        await conn.execute(
            "UPDATE webhook_deliveries SET delivered_at = now() - interval '8 days'"
            " WHERE (payload ->> 'n')::int < 2"
        )
        await webhooks.enqueue(conn, app_id=DEFAULT_APP_ID, kind="devices.retired", payload={})
    sender = WebhookSender(pipeline.pool, pipeline.settings, keyring(pipeline.settings))
    try:
        assert await sender.purge() == 2
        assert await sender.purge() == 0
    finally:
        await sender.aclose()
    async with pipeline.pool.acquire() as conn:
        left = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
    assert left == 3  # two delivered this week, one pending


def _cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fanout", "webhooks", *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
            "FANOUT_DATABASE_URL": settings.database_dsn(),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_adds_lists_tests_replays_and_deletes(settings: Settings) -> None:
    key = generate_key()
    unset = _cli(settings, "add", "https://93.184.215.14/in", "--kind", "event.finished")
    assert unset.returncode == 2 and unset.stderr.startswith("fanout: FANOUT_SECRET_KEY is not set")
    refused = _cli(
        settings,
        "add",
        "https://169.254.169.254/",
        "--kind",
        "event.finished",
        FANOUT_SECRET_KEY=key,
    )
    assert refused.returncode == 2
    assert refused.stderr == (
        "fanout: URL: 169.254.169.254, the cloud metadata address: webhooks go to public "
        "addresses only (FANOUT_WEBHOOK_ALLOW_PRIVATE=true allows others, for development)\n"
    )
    made = _cli(
        settings,
        "add",
        "https://93.184.215.14/in",
        "--kind",
        "event.finished",
        "--kind",
        "devices.retired",
        FANOUT_SECRET_KEY=key,
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("whsec_") and "whsec_" not in made.stderr
    listed = _cli(settings, "list", "--json")
    [endpoint] = orjson.loads(listed.stdout)
    assert endpoint["state"] == "active" and "whsec_" not in listed.stdout
    webhook = str(endpoint["id"])
    assert _cli(settings, "test", webhook).returncode == 0
    assert _cli(settings, "replay", webhook).stderr == "0 deliveries sent again\n"
    assert _cli(settings, "replay", "--delivery", "999999").returncode == 1
    assert _cli(settings, "delete", webhook).returncode == 0
    assert _cli(settings, "delete", webhook).returncode == 1


async def test_a_rotation_reseals_the_signing_secrets_and_the_start_up_check_counts_them(
    hook_pipeline: Pipeline, receiver: Receiver
) -> None:
    pipeline = hook_pipeline
    endpoint_id = await _register(pipeline, receiver, ["event.finished"])
    old = pipeline.settings
    new_key = generate_key()
    assert old.secret_key is not None
    rotating = Keyring.from_base64(new_key, old.secret_key.get_secret_value())
    async with pipeline.pool.acquire() as conn:
        done = await rotate(conn, keyring=rotating)
        assert (done.resealed, done.failed) == (1, [])
        new = old.model_copy(update={"secret_key": SecretStr(new_key)})
        await check_secret_key(conn, settings=new)  # the new key opens everything
        with pytest.raises(ConfigError, match="FANOUT_SECRET_KEY"):
            await check_secret_key(conn, settings=old)
        await webhooks.enqueue_test(
            conn, app_id=DEFAULT_APP_ID, endpoint_id=endpoint_id, kind="webhook.test", payload={}
        )
    receiver.up()
    sender = WebhookSender(pipeline.pool, new, keyring(new))  # the old key is gone
    try:
        assert (await sender.send_due()).delivered == 1
    finally:
        await sender.aclose()
    assert receiver.unverified == [] and len(receiver.received) == 1


async def test_every_way_an_event_ends_writes_its_event_finished_row_with_it(
    hook_pipeline: Pipeline, receiver: Receiver
) -> None:
    pipeline = hook_pipeline
    await _register(pipeline, receiver, ["event.finished"])
    topic, _ = await _seed_topic(pipeline, 3, 0)
    failing = await record_event(pipeline.pool, NOTE, topic=topic)
    cancelled = await record_event(pipeline.pool, NOTE, topic=topic)
    async with pipeline.pool.acquire() as conn:
        async with conn.transaction():
            assert await lifecycle.fail(conn, event_id=failing.event_id, reason="too big")
            assert await lifecycle.fail(conn, event_id=failing.event_id, reason="again") is False
        state = await lifecycle.cancel(conn, event_id=cancelled.event_id, app_id=None)
        assert state is lifecycle.EventState.CANCELLED
        rows = await conn.fetch(
            "SELECT payload FROM webhook_deliveries WHERE kind = 'event.finished' ORDER BY id"
        )
    assert [(r["payload"]["event_id"], r["payload"]["status"]) for r in rows] == [
        (failing.event_id, "failed"),
        (cancelled.event_id, "cancelled"),
    ]
    assert rows[0]["payload"]["sent"] == 0


async def test_an_error_answer_is_kept_short_and_the_row_tried_again(
    hook_pipeline: Pipeline, receiver: Receiver
) -> None:
    pipeline = hook_pipeline
    endpoint_id = await _register(pipeline, receiver, ["devices.failed"])
    receiver.refusing = 503
    receiver.up()
    async with pipeline.pool.acquire() as conn:
        await webhooks.enqueue(conn, app_id=DEFAULT_APP_ID, kind="devices.failed", payload={})
    sender = WebhookSender(pipeline.pool, pipeline.settings, keyring(pipeline.settings))
    try:
        assert (await sender.send_due()).retrying == 1
    finally:
        await sender.aclose()
    async with pipeline.pool.acquire() as conn:
        [row] = await webhooks.recent_deliveries(
            conn, app_id=DEFAULT_APP_ID, endpoint_id=endpoint_id, limit=1
        )
        [endpoint] = await webhooks.list_endpoints(conn, app_id=DEFAULT_APP_ID)
    assert (row.status, row.last_status, row.attempts) == ("pending", 503, 1)
    assert row.last_answer is not None and row.last_answer.startswith("busy, try later")
    assert len(row.last_answer) == webhooks.ANSWER_CHARS
    assert endpoint.failing_since is not None and endpoint.disabled_at is None


async def test_a_name_public_at_registration_and_loopback_at_send_is_refused_at_send(
    hook_pipeline: Pipeline,
) -> None:
    """The address is checked again before every call (a name's records can change after
    registration, DNS rebinding): the row is not sent, its answer says why."""
    pipeline = hook_pipeline
    strict = pipeline.settings.model_copy(update={"webhook_allow_private": False})
    asked: list[str] = []

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    async def now_loopback(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    async with pipeline.pool.acquire() as conn:
        endpoint, _ = await register(
            conn,
            app_id=DEFAULT_APP_ID,
            url="https://hooks.example.com/in",
            kinds=["devices.failed"],
            keyring=keyring(strict),
            resolver=public,
            allow_private=False,
        )
        await webhooks.enqueue(conn, app_id=DEFAULT_APP_ID, kind="devices.failed", payload={})
    sender = WebhookSender(pipeline.pool, strict, keyring(strict), resolver=now_loopback)
    try:
        done = await sender.send_due()
    finally:
        await sender.aclose()
    assert asked == ["hooks.example.com"]
    assert (done.claimed, done.delivered) == (1, 0)
    async with pipeline.pool.acquire() as conn:
        [row] = await webhooks.recent_deliveries(
            conn, app_id=DEFAULT_APP_ID, endpoint_id=endpoint.id, limit=1
        )
    assert row.status != "delivered" and row.last_status is None
    assert row.last_answer is not None and row.last_answer.startswith("refused:"), row.last_answer
    assert "loopback" in row.last_answer


async def test_opens_reach_push_opened_endpoints_aggregated_each_counted_once(
    hook_pipeline: Pipeline, receiver: Receiver
) -> None:
    """200 opens (each posted twice) and 50 clicks, posted at once: a few calls, not one
    per open, and their sum is 200 opens and 50 clicks exactly."""
    pipeline = hook_pipeline
    await _register(pipeline, receiver, ["push.opened"])
    topic, _ = await _seed_topic(pipeline, 200, 0)
    event = await record_event(pipeline.pool, NOTE, topic=topic)
    async with pipeline.pool.acquire() as conn:
        devices = [r["id"] for r in await conn.fetch("SELECT id FROM devices ORDER BY id")]
    tokens = OpenTokens(secrets.token_bytes(32))

    async def post(device_id: int, action: str | None) -> None:
        await stages_opens.record_open(
            pipeline.pool,
            tokens,
            tokens.token(event.event_id, device_id),
            action=action,
            opened_at=None,
            window_seconds=86400,
        )

    opening = [post(d, None) for d in devices for _ in range(2)]
    clicking = [post(d, "read") for d in devices[:50]]
    await asyncio.gather(*opening, *clicking)
    async with pipeline.pool.acquire() as conn:
        rows = await conn.fetch("SELECT payload FROM webhook_deliveries ORDER BY id")
        # Gathered for PUSH_OPENED_GATHER_SECONDS: due now rather than waited for.
        await conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now()")
    assert len(rows) < 50  # aggregated: far fewer calls than opens
    receiver.up()
    sender = WebhookSender(pipeline.pool, pipeline.settings, keyring(pipeline.settings))
    try:
        while (await sender.send_due()).claimed:
            pass
    finally:
        await sender.aclose()
    assert receiver.unverified == []
    messages = [copies[0].message for copies in receiver.by_id().values()]
    assert len(messages) == len(rows)
    assert all(m["type"] == "push.opened" for m in messages)
    assert {m["data"]["event_id"] for m in messages} == {event.event_id}
    assert sum(m["data"]["opened"] for m in messages) == 200
    assert sum(m["data"]["clicks"].get("read", 0) for m in messages) == 50
