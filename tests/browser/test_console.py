"""An operator in a real browser: signs in, watches an event go out, finds a user's push,
sees a dead letter and redrives it; and is refused without a key or the scope."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.async_api import Page, expect

from fanout.queue.admin import queue_depths
from fanout.queue.sqs import open_client, open_queues
from tests.browser.conftest import DEAD_TOKENS, LiveConsole, assert_tables_aligned, look_at
from tests.helpers import wait_for

# Long enough for a loaded machine; they only end a test that would hang.
DELIVERED_WITHIN_MS = 180_000


async def sign_in(page: Page, console: LiveConsole, key: str) -> None:
    await page.goto(f"{console.url}/console")
    await expect(page).to_have_url(re.compile(r"/console/login\?next="))
    await page.fill("input[name=api_key]", console.keys[key])
    await page.click("button[type=submit]")


def csp_violations(page: Page) -> list[str]:
    """Messages the browser logs when the Content-Security-Policy blocks something."""
    seen: list[str] = []
    page.on(
        "console",
        lambda message: (
            seen.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return seen


async def publish(console: LiveConsole) -> int:
    async with httpx.AsyncClient(base_url=console.url, timeout=30) as client:
        response = await client.post(
            "/v1/events",
            headers={"Authorization": f"Bearer {console.keys['operator']}"},
            json={
                "topic": console.topic,
                "notification": {"title": "A new book by your favourite author"},
            },
        )
    assert response.status_code == 202, response.text
    event_id: int = response.json()["event_id"]
    return event_id


async def test_operator_watches_an_event_finds_a_push_and_redrives_a_dead_letter(
    live_console: LiveConsole, browser: Any
) -> None:
    console = live_console
    page: Page = await browser.new_page(viewport={"width": 1360, "height": 900})
    blocked = csp_violations(page)
    await page.goto(f"{console.url}/console")
    await look_at(page, "1-sign-in")
    await sign_in(page, console, "operator")
    await expect(page.locator("h1")).to_have_text("Events")
    await assert_tables_aligned(page, "events, before the event")

    event_id = await publish(console)
    await page.goto(f"{console.url}/console/events/{event_id}")
    # htmx swaps the live part in every second until the event ends.
    live = page.locator("#live")
    await expect(live).to_have_attribute("data-status", "delivered", timeout=DELIVERED_WITHIN_MS)
    ledger = console.sink.sink.ledger
    assert (ledger.unique, ledger.duplicates) == (console.expected_sent, 0)
    await expect(page.locator("#count-sent")).to_have_text(str(ledger.unique))
    await expect(page.locator("#count-invalid")).to_have_text(str(DEAD_TOKENS))
    await expect(page.locator("#count-failed")).to_have_text("0")
    await expect(page.locator("#count-pending")).to_have_text("0")
    await page.reload()  # the chart once more, over the whole event
    await expect(page.locator("#chart canvas").first).to_be_visible()
    await look_at(page, "2-event")

    await page.goto(f"{console.url}/console")
    row = page.locator(f"tr[data-event='{event_id}']")
    await expect(row).to_have_attribute("data-status", "delivered")
    await look_at(page, "3-events")

    # Where is my push? A user with one good device and one dead token.
    await page.click("text=Where is my push?")
    await page.fill("input[name=event]", str(event_id))
    await page.fill("input[name=user]", console.dead_token_user)
    await assert_tables_aligned(page, "where, before the search")
    await page.click("button:has-text('Find')")
    devices = page.locator("#where-devices tbody tr")
    await expect(devices).to_have_count(2)
    await look_at(page, "4-where")
    await expect(page.locator("#where-devices tr[data-outcome='sent']")).to_have_count(1)
    dead = page.locator("#where-devices tr[data-outcome='invalid']")
    await expect(dead).to_contain_text("sink: unregistered")
    await expect(page.locator("#where-batches tbody tr")).to_have_count(1)
    await look_at(page, "4-where")

    # A message no worker can read: tried twice, then dead-lettered with the reason.
    async with open_client(console.settings) as client:
        queues = await open_queues(client, console.settings)
        await queues.delivery.send("this is not a batch")

        async def dead_lettered() -> bool:
            depths = {d.name: d for d in await queue_depths(queues)}
            return depths[f"{console.settings.queue_prefix}-delivery-dlq"].waiting >= 1

        await wait_for(dead_lettered, "the poison message in the delivery DLQ", timeout=120)
    await page.click("text=Providers & queues")
    letters = page.locator("#dead-letters")
    await expect(letters).to_contain_text("body is not JSON")
    await expect(page.locator("#providers")).to_contain_text("apns")
    await look_at(page, "5-queues")
    await page.click("#redrive-delivery")
    await expect(page.locator("#moved")).to_have_text(
        "1 message(s) moved back to the delivery queue"
    )
    await look_at(page, "6-redriven")
    assert blocked == []


async def test_console_refuses_without_a_key_or_the_scope(
    live_console: LiveConsole, browser: Any
) -> None:
    console = live_console
    page: Page = await browser.new_page()
    await page.goto(f"{console.url}/console/queues")
    await expect(page).to_have_url(re.compile(r"/console/login\?next=/console/queues"))

    await page.fill("input[name=api_key]", "fo_000000000000_not-a-key")
    await page.click("button[type=submit]")
    await expect(page.locator("#login-error")).to_contain_text("401")

    await page.fill("input[name=api_key]", console.keys["publish_only"])
    await page.click("button[type=submit]")
    await expect(page.locator("#login-error")).to_contain_text("lacks the 'read' scope")
    await look_at(page, "7-refused-sign-in")

    await page.fill("input[name=api_key]", console.keys["read"])
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/console/queues$"))
    await assert_tables_aligned(page, "queues, signed in with the read scope")
    await page.click("#redrive-delivery")
    await expect(page.locator("#refusal")).to_contain_text("lacks the 'manage' scope")
    await look_at(page, "8-refused-redrive")

    # The same session without its CSRF token: refused before anything else is looked at.
    response = await page.request.post(f"{console.url}/console/queues/delivery/redrive")
    assert response.status == 403
    assert "CSRF" in await response.text()
