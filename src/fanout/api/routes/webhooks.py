"""Webhooks (issue #24): an app's endpoints, their recent deliveries, a test call and
replays. A key sees its own app's endpoints only; another app's are not found (404).

The signing secret is in the creation's answer alone; no other answer, page or log holds it.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response
from fastapi.exceptions import RequestValidationError

from fanout.api import schemas
from fanout.api.auth import Manager, Reader
from fanout.api.state import Pool, State
from fanout.config import ConfigError
from fanout.credentials.stored import keyring
from fanout.store import webhooks
from fanout.webhooks import addresses
from fanout.webhooks.endpoints import UnknownKind, register

router = APIRouter(tags=["webhooks"])

# The deliveries an endpoint's answer lists, newest first.
RECENT = 50


def _state_of(endpoint: webhooks.Endpoint) -> str:
    if endpoint.disabled_at is not None:
        return "disabled"
    return "failing" if endpoint.failing_since is not None else "active"


def webhook_out(endpoint: webhooks.Endpoint) -> schemas.WebhookOut:
    return schemas.WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        kinds=endpoint.kinds,
        state=_state_of(endpoint),  # type: ignore[arg-type]
        created_at=endpoint.created_at,
        failing_since=endpoint.failing_since,
        disabled_at=endpoint.disabled_at,
    )


def delivery_out(delivery: webhooks.Delivery) -> schemas.WebhookDeliveryOut:
    return schemas.WebhookDeliveryOut(
        id=delivery.id,
        kind=delivery.kind,
        webhook_id=delivery.webhook_id,
        status=delivery.status,  # type: ignore[arg-type]
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
        last_status=delivery.last_status,
        last_answer=delivery.last_answer,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )


def _refused(field: str, problem: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ["body", field], "msg": problem}])


@router.post(
    "/v1/webhooks",
    status_code=201,
    responses={
        **schemas.problems(401, 403),
        503: {"model": schemas.Problem, "description": "FANOUT_SECRET_KEY is not set"},
    },
)
async def create_webhook(
    body: schemas.WebhookIn, key: Manager, pool: Pool, state: State
) -> schemas.WebhookCreated:
    """Register an endpoint for the kinds given. Its URL must be https:// on a public
    address (422 naming ``url`` otherwise). The answer holds the ``whsec_`` signing secret:
    shown this once."""
    settings = state.settings
    try:
        async with pool.acquire() as conn:
            endpoint, secret = await register(
                conn,
                app_id=key.app_id,
                url=body.url,
                kinds=body.kinds,
                keyring=keyring(settings),
                resolver=state.webhook_resolver,
                allow_private=settings.webhook_allow_private,
            )
    except addresses.RefusedAddress as exc:
        raise _refused("url", str(exc)) from None
    except UnknownKind as exc:
        raise _refused("kinds", str(exc)) from None
    except ConfigError as exc:
        raise HTTPException(503, str(exc)) from None
    return schemas.WebhookCreated(**webhook_out(endpoint).model_dump(), secret=secret)


@router.get("/v1/webhooks", responses=schemas.problems(401, 403))
async def list_webhooks(key: Reader, pool: Pool) -> list[schemas.WebhookOut]:
    """The app's endpoints and their state (active, failing, disabled)."""
    async with pool.acquire() as conn:
        found = await webhooks.list_endpoints(conn, app_id=key.app_id)
    return [webhook_out(endpoint) for endpoint in found]


@router.get("/v1/webhooks/{webhook_id}", responses=schemas.problems(401, 403, 404))
async def get_webhook(
    webhook_id: schemas.RowIdPath, key: Reader, pool: Pool
) -> schemas.WebhookDetail:
    """The endpoint and its last deliveries, each with its last answer."""
    async with pool.acquire() as conn:
        endpoint = await webhooks.endpoint(conn, app_id=key.app_id, endpoint_id=webhook_id)
        if endpoint is None:
            raise HTTPException(404, "no such webhook")
        recent = await webhooks.recent_deliveries(
            conn, app_id=key.app_id, endpoint_id=webhook_id, limit=RECENT
        )
    return schemas.WebhookDetail(
        **webhook_out(endpoint).model_dump(), deliveries=[delivery_out(d) for d in recent]
    )


@router.delete(
    "/v1/webhooks/{webhook_id}", status_code=204, responses=schemas.problems(401, 403, 404)
)
async def delete_webhook(webhook_id: schemas.RowIdPath, key: Manager, pool: Pool) -> Response:
    """Delete the endpoint and its deliveries (those not yet sent are not sent)."""
    async with pool.acquire() as conn:
        deleted = await webhooks.delete_endpoint(conn, app_id=key.app_id, endpoint_id=webhook_id)
    if not deleted:
        raise HTTPException(404, "no such webhook")
    return Response(status_code=204)


@router.post(
    "/v1/webhooks/{webhook_id}/test",
    status_code=202,
    responses=schemas.problems(401, 403, 404),
)
async def test_webhook(
    webhook_id: schemas.RowIdPath, key: Manager, pool: Pool
) -> schemas.WebhookTestAccepted:
    """Queue a ``webhook.test`` delivery to this endpoint, sent as every delivery is."""
    async with pool.acquire() as conn:
        made = await webhooks.enqueue_test(
            conn,
            app_id=key.app_id,
            endpoint_id=webhook_id,
            kind=webhooks.TEST_KIND,
            payload={"webhook": webhook_id, "app": key.app},
        )
    if made is None:
        raise HTTPException(404, "no such webhook")
    return schemas.WebhookTestAccepted(delivery_id=made)


@router.post("/v1/webhooks/{webhook_id}/replay", responses=schemas.problems(401, 403, 404))
async def replay_webhook(
    webhook_id: schemas.RowIdPath, key: Manager, pool: Pool
) -> schemas.WebhookReplayed:
    """Enable the endpoint again (if it was disabled) and send each of its failed
    deliveries again, with its own webhook-id."""
    async with pool.acquire() as conn:
        replayed = await webhooks.replay_endpoint(conn, app_id=key.app_id, endpoint_id=webhook_id)
    if replayed is None:
        raise HTTPException(404, "no such webhook")
    return schemas.WebhookReplayed(replayed=replayed)


@router.post(
    "/v1/webhooks/deliveries/{delivery_id}/replay",
    responses=schemas.problems(401, 403, 404),
)
async def replay_delivery(
    delivery_id: schemas.RowIdPath, key: Manager, pool: Pool
) -> schemas.WebhookReplayed:
    """Send one failed delivery again (same webhook-id); 404 for one that is not failed."""
    async with pool.acquire() as conn:
        replayed = await webhooks.replay_delivery(conn, app_id=key.app_id, delivery_id=delivery_id)
    if not replayed:
        raise HTTPException(404, "no such failed delivery")
    return schemas.WebhookReplayed(replayed=1)
