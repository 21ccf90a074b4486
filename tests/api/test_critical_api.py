"""Critical alerts are allowed per app (Apple grants the entitlement per app): an app's own
``allow_critical`` (PATCH /v1/apps/{app}, admin only) decides for its keys, on the single
and the batch publish routes; FANOUT_APNS_ALLOW_CRITICAL is the default of the apps
without one (this server's: off)."""

from __future__ import annotations

import pytest

from tests.api.conftest import ApiServer
from tests.api.test_pacing_api import admin_and_app_key, api_headers, unique

CRITICAL = {"title": "Flood warning", "interruption_level": "critical"}


@pytest.mark.parametrize("given", ["yes", 1, "true", [True]])
async def test_an_allow_critical_not_a_boolean_is_a_422_naming_the_field(
    api: ApiServer, given: object
) -> None:
    app = unique("crit")
    admin, _ = await admin_and_app_key(api, app)
    async with api.client() as client:
        bad = await client.patch(
            f"/v1/apps/{app}", json={"allow_critical": given}, headers=api_headers(admin)
        )
    assert bad.status_code == 422, bad.text
    assert [e["loc"] for e in bad.json()["detail"]] == [["body", "allow_critical"]]


async def test_an_app_allowed_critical_alerts_publishes_them_and_another_app_is_refused(
    api: ApiServer,
) -> None:
    allowed_app, refused_app = unique("crit-a"), unique("crit-b")
    admin, allowed_key = await admin_and_app_key(api, allowed_app)
    _, refused_key = await admin_and_app_key(api, refused_app)
    async with api.client() as client:
        forbidden = await client.patch(
            f"/v1/apps/{allowed_app}",
            json={"allow_critical": True},
            headers=api_headers(allowed_key),
        )
        assert forbidden.status_code == 403, forbidden.text
        set_ = await client.patch(
            f"/v1/apps/{allowed_app}", json={"allow_critical": True}, headers=api_headers(admin)
        )
        assert set_.status_code == 200, set_.text
        assert set_.json()["allow_critical"] is True
        shown = await client.get(f"/v1/apps/{refused_app}", headers=api_headers(admin))
        assert shown.json()["allow_critical"] is None  # the deployment's default

        body = {"topic": unique("t"), "notification": CRITICAL}
        accepted = await client.post("/v1/events", json=body, headers=api_headers(allowed_key))
        assert accepted.status_code == 202, accepted.text
        refused = await client.post("/v1/events", json=body, headers=api_headers(refused_key))
        assert refused.status_code == 422, refused.text
        [problem] = refused.json()["detail"]
        assert problem["loc"] == ["body", "notification", "interruption_level"]
        assert "allow_critical" in problem["msg"] and "FANOUT_APNS_ALLOW_CRITICAL" in problem["msg"]

        items = {"items": [{"user_id": unique("u"), "notification": CRITICAL}]}
        batch_ok = await client.post(
            "/v1/notifications/batch", json=items, headers=api_headers(allowed_key)
        )
        assert batch_ok.status_code == 202, batch_ok.text
        assert batch_ok.json()["accepted"] == 1
        batch_refused = await client.post(
            "/v1/notifications/batch", json=items, headers=api_headers(refused_key)
        )
        assert batch_refused.status_code == 422, batch_refused.text
        [problem] = batch_refused.json()["detail"]
        assert problem["loc"] == ["body", "items", 0, "notification", "interruption_level"]

        # false refuses; null returns the app to the deployment's default (off here).
        for setting in (False, None):
            changed = await client.patch(
                f"/v1/apps/{allowed_app}",
                json={"allow_critical": setting},
                headers=api_headers(admin),
            )
            assert changed.json()["allow_critical"] is setting
            again = await client.post("/v1/events", json=body, headers=api_headers(allowed_key))
            assert again.status_code == 422, again.text
