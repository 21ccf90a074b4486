"""The API's routes, one module per resource; ``create_app`` includes them in this order."""

from fanout.api.routes import (
    apps,
    audience,
    batch,
    devices,
    events,
    imports,
    live_activities,
    opens,
    operations,
    subscriptions,
    webhooks,
)

ROUTERS = (
    devices.router,
    subscriptions.router,
    imports.router,
    audience.router,
    events.router,
    batch.router,
    live_activities.router,
    opens.router,
    operations.router,
    webhooks.router,
    apps.router,
)

__all__ = ["ROUTERS"]
