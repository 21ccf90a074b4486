"""The console's pages against the ASGI app: filters, the polled fragments, the chart data."""

from __future__ import annotations

from fanout.notification import LiveActivity, Notification
from fanout.queue.sqs import Queues
from fanout.stages.live_activity import publish_update
from fanout.stages.publish import PublishOptions, record_event
from fanout.store import opens
from tests.console.conftest import Console
from tests.helpers import make_topic


async def test_the_events_list_filters_by_topic_and_status(console: Console) -> None:
    pool = console.app.state.api.pool
    first, second = await make_topic(pool, 2), await make_topic(pool, 2)
    one = await record_event(pool, Notification(title="one"), topic=first.key)
    two = await record_event(pool, Notification(title="two"), topic=second.key)
    async with console.signed_in("read") as client:
        everything = await client.get("/console")
        by_topic = await client.get("/console", params={"topic": first.key})
        by_status = await client.get("/console", params={"status": "delivered"})
        pending = await client.get(
            "/console/events/rows", params={"topic": second.key, "status": "pending"}
        )
    for event in (one, two):
        assert f'data-event="{event.event_id}"' in everything.text
    assert f'data-event="{one.event_id}"' in by_topic.text
    assert f'data-event="{two.event_id}"' not in by_topic.text
    # The list polls its fragment with the same filters.
    assert f"/console/events/rows?topic={first.key.replace(':', '%3A')}" in by_topic.text
    assert "data-event=" not in by_status.text
    assert f'data-event="{two.event_id}"' in pending.text
    assert f'data-event="{one.event_id}"' not in pending.text


async def test_the_console_shows_each_events_kind(console: Console) -> None:
    pool = console.app.state.api.pool
    topic = await make_topic(pool, 1)
    alert = await record_event(pool, Notification(title="Chapter 12"), topic=topic.key)
    background = await record_event(
        pool, Notification(kind="background", data={"sync": "1"}), topic=topic.key
    )
    async with console.signed_in("read") as client:
        rows = (await client.get("/console/events/rows", params={"topic": topic.key})).text
        page = (await client.get(f"/console/events/{background.event_id}")).text
    # Stored without a kind (an alert's default is not stored): shown as an alert.
    assert f'#{alert.event_id}</a> <span class="kind kind-alert">alert</span> Chapter 12' in rows
    assert (
        f'#{background.event_id}</a> <span class="kind kind-background">background</span>' in rows
    )
    assert '<span class="kind kind-background">background</span>' in page


async def test_a_live_activity_update_shows_its_kind_and_activity(console: Console) -> None:
    async def no_queue() -> Queues:
        raise ConnectionError("left to the reconciler")

    update = Notification(
        kind="liveactivity",
        live_activity=LiveActivity(event="update", content_state={"score": "1-0"}),
    )
    pool = console.app.state.api.pool
    done = await publish_update(
        pool, no_queue, update, activity_key="match:console", enqueue_timeout=1
    )
    async with console.signed_in("read") as client:
        page = (await client.get(f"/console/events/{done.published.event_id}")).text
    assert '<span class="kind kind-liveactivity">liveactivity</span>' in page
    assert "to live activity match:console" in page


async def test_an_event_page_polls_until_the_event_ends(console: Console) -> None:
    pool = console.app.state.api.pool
    topic = await make_topic(pool, 1)
    event = await record_event(pool, Notification(title="t"), topic=topic.key)
    async with console.signed_in("read") as client:
        running = await client.get(f"/console/events/{event.event_id}/live")
        assert 'hx-trigger="every 1s"' in running.text
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE events SET status = 'no_recipients', finished_at = now() WHERE id = $1",
                event.event_id,
            )
        ended = await client.get(f"/console/events/{event.event_id}/live")
        chart = await client.get(f"/console/events/{event.event_id}/throughput.json")
        missing = await client.get("/console/events/999999")
    assert 'data-status="no_recipients"' in ended.text and "hx-trigger" not in ended.text
    assert chart.json() == {"bucket_seconds": 1, "x": [], "sent": [], "not_sent": []}
    assert missing.status_code == 404


async def test_an_event_page_shows_its_opens_per_provider_and_clicks(console: Console) -> None:
    pool = console.app.state.api.pool
    topic = await make_topic(pool, 3)
    event = await record_event(pool, Notification(title="t"), topic=topic.key)
    async with console.signed_in("read") as client:
        before = (await client.get(f"/console/events/{event.event_id}/live")).text
        async with pool.acquire() as conn:
            for device_id, action in zip(topic.device_ids, ("read", None, "read"), strict=True):
                await opens.record_open(
                    conn,
                    event_id=event.event_id,
                    device_id=device_id,
                    action=action,
                    opened_at=None,
                    window_seconds=86400,
                )
        page = (await client.get(f"/console/events/{event.event_id}")).text
    assert "No open reported yet" in before
    assert '<dd id="count-opened">3</dd>' in page
    assert '<dd class="clicks" data-action="read">2</dd>' in page
    assert '<table id="opens-by-provider">' in page and "<td>apns</td>" in page


async def test_a_paced_events_page_shows_its_rate_what_is_sent_and_the_expected_end(
    console: Console,
) -> None:
    pool = console.app.state.api.pool
    topic = await make_topic(pool, 1)
    paced = await record_event(
        pool,
        Notification(title="t"),
        topic=topic.key,
        options=PublishOptions(throttle_per_minute=20_000),
    )
    plain = await record_event(pool, Notification(title="t"), topic=topic.key)
    async with console.signed_in("read") as client:
        page = (await client.get(f"/console/events/{paced.event_id}")).text
        unpaced = (await client.get(f"/console/events/{plain.event_id}")).text
    assert '<strong id="pacing-throttle">20,000</strong> devices a minute' in page
    assert 'id="pacing-sent">0</span> sent so far' in page
    assert 'id="pacing-expected-end"' in page
    assert 'id="pacing"' not in unpaced
