"""The console's webhooks page: an app's endpoints, a disabled one shown as such, their
recent deliveries with the last answer, and the replay buttons (the manage scope)."""

from __future__ import annotations

from fanout.store import webhooks
from fanout.store.apps import DEFAULT_APP_ID
from tests.console.conftest import Console, form_token, page_parts


async def test_a_disabled_endpoint_is_shown_and_its_failed_delivery_replayed(
    console: Console,
) -> None:
    pool = console.app.state.api.pool
    async with pool.acquire() as conn:
        endpoint = await webhooks.insert_endpoint(
            conn,
            app_id=DEFAULT_APP_ID,
            url="https://93.184.215.14/hooks",
            kinds=["devices.retired"],
            secret_sealed=b"\x01sealed",
            kek_id="00000000",
        )
        await webhooks.enqueue(
            conn, app_id=DEFAULT_APP_ID, kind="devices.retired", payload={"devices": []}
        )
        # As a day of refused calls leaves them (the sender's statements are tested for
        # real in tests/integration/test_webhooks.py).
        await conn.execute(
            "UPDATE webhook_endpoints SET disabled_at = now(), failing_since = now()"
        )
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'failed', attempts = 9,"
            " last_answer = 'ConnectError: connection refused'"
        )
    async with console.signed_in("read") as reader:
        page = await reader.get("/console/webhooks")
        assert page.status_code == 200
        assert f'data-webhook="{endpoint.id}" data-state="disabled"' in page.text
        assert (
            "ConnectError: connection refused" in page.text and 'data-status="failed"' in page.text
        )
        assert "needs the <code>manage</code> scope" in page.text
        assert page_parts(page.text).inline_scripts == 0
        refused = await reader.post(
            f"/console/webhooks/{endpoint.id}/replay",
            data={"csrf_token": form_token(page.text)},
        )
        assert refused.status_code == 403
    async with console.signed_in("manage") as manager:
        page = await manager.get("/console/webhooks")
        replayed = await manager.post(
            f"/console/webhooks/{endpoint.id}/replay",
            data={"csrf_token": form_token(page.text)},
        )
        assert replayed.status_code == 303
        after = await manager.get(replayed.headers["location"])
        assert "1 deliveries sent again" in after.text
        assert f'data-webhook="{endpoint.id}" data-state="active"' in after.text
        assert 'data-status="pending"' in after.text
