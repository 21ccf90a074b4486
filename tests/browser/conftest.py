"""The console in a real browser: Debian's chromium driven by Playwright for Python,
against a live `fanout serve` and `fanout worker` delivering to a push sink.

No browser is downloaded: Playwright launches /usr/bin/chromium (.ci/run installs the
package). Screenshots of each page go to tests/browser/screenshots/, taken by `look_at`
once it has checked that every table's rows are as wide as its header.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.local.demo import DeviceShape, seed
from fanout.local.sink import EmbeddedSink
from fanout.local.workers import WorkerProcess
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.store import connect
from tests.api.conftest import start_server
from tests.faults.conftest import sink_worker
from tests.helpers import add_device
from tests.processes import stop

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"
SUBSCRIBERS = 3000
DEAD_TOKENS = 5

if not CHROMIUM.exists():
    why = "the browser tests need Debian's chromium: apt-get install -y chromium"
    if os.environ.get("FANOUT_TEST_REQUIRE_ALL"):  # .ci/run: never skipped there
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)
playwright = pytest.importorskip("playwright.async_api")
# Each expect() waits for the page to get there: Playwright's default 5 s is what chromium
# may take on a loaded machine; a page that never gets there still fails, after a minute.
playwright.expect.set_options(timeout=60_000)

KEYS = {
    "operator": ["read", "publish", "manage"],
    "read": ["read"],
    "publish_only": ["publish"],
}


@dataclass
class LiveConsole:
    url: str
    keys: dict[str, str]
    settings: Settings
    sink: EmbeddedSink
    topic: str
    users: list[str]  # external ids, in user id order
    dead_token_user: str
    expected_sent: int


async def _prepare(settings: Settings) -> tuple[dict[str, str], str, list[str], str]:
    async with open_client(settings) as client:
        await create_queues(client, settings)
    conn = await connect(settings.database_dsn())
    try:
        keys = {n: (await create_api_key(conn, s, n))[1] for n, s in KEYS.items()}
        seeded = await seed(conn, SUBSCRIBERS, 1, DeviceShape(platforms=("apns", "fcm")))
        users = [
            r["external_id"]
            for r in await conn.fetch(
                "SELECT u.external_id FROM users u JOIN subscriptions s ON s.user_id = u.id "
                "JOIN topics t ON t.id = s.topic_id WHERE t.key = $1 ORDER BY u.id",
                seeded.topic,
            )
        ]
        # A few dead tokens, so that the pages have something retired to show.
        for external_id in users[10 : 10 + DEAD_TOKENS]:
            user_id = await conn.fetchval(
                "SELECT id FROM users WHERE external_id = $1", external_id
            )
            await add_device(conn, user_id, f"invalid-{secrets.token_hex(6)}")
    finally:
        await conn.close()
    return keys, seeded.topic, users, users[10]


@pytest.fixture
async def live_console(
    settings: Settings, sink: EmbeddedSink, tmp_path: Path
) -> AsyncIterator[LiveConsole]:
    # Small batches: the chart and the batch tables have several to show.
    settings = settings.model_copy(update={"max_receive_count": 2, "batch_max_bytes": 16384})
    keys, topic, users, dead_token_user = await _prepare(settings)
    worker: WorkerProcess = sink_worker(settings, "all", sink.url, tmp_path)
    worker.start()
    server, url = await asyncio.to_thread(start_server, settings, tmp_path / "serve.log")
    try:
        await asyncio.to_thread(worker.wait_until_consuming)
        yield LiveConsole(url, keys, settings, sink, topic, users, dead_token_user, SUBSCRIBERS)
    finally:
        stop(server)
        worker.stop()


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with playwright.async_playwright() as p:
        # As root (CI) chromium needs --no-sandbox; nothing but our loopback pages is opened.
        launched = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


# Per table on the page: its id or position, and each row whose width (cells, counting
# colspans) differs from the header row's, as "row n: m cells".
_MISALIGNED_ROWS_JS = """
() => Array.from(document.querySelectorAll("table")).map((table, i) => {
  const width = row => Array.from(row.cells).reduce((n, cell) => n + cell.colSpan, 0);
  const header = table.tHead ? table.tHead.rows[table.tHead.rows.length - 1] : table.rows[0];
  const body = Array.from(table.tBodies).flatMap(tbody => Array.from(tbody.rows));
  return {
    table: table.id || `table ${i + 1}`,
    header: width(header),
    rows: body.flatMap((row, n) => width(row) === width(header) ? [] : [`row ${n + 1}: ${width(row)} cells`]),
  };
}).filter(t => t.rows.length > 0)
"""


async def assert_tables_aligned(page: Any, name: str) -> None:
    """Every table's rows have as many cells as its header: a column added to the rows or
    to the header alone puts numbers under the wrong heading (issue #28)."""
    misaligned = await page.evaluate(_MISALIGNED_ROWS_JS)
    assert misaligned == [], f"{name}: rows wider or narrower than their header: {misaligned}"


async def look_at(page: Any, name: str) -> Path:
    """A page the operator sees: its tables checked, then a screenshot of it. The only way
    the tests take one, so every page they show is checked; a page they do not screenshot
    calls ``assert_tables_aligned`` itself."""
    await assert_tables_aligned(page, name)
    return await _screenshot(page, name)


async def _screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
