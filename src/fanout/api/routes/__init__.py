"""The API's routes, one module per resource; ``create_app`` includes them in this order."""

from fanout.api.routes import (
    apps,
    audience,
    batch,
    devices,
    events,
    live_activities,
    operations,
    subscriptions,
)

ROUTERS = (
    devices.router,
    subscriptions.router,
    audience.router,
    events.router,
    batch.router,
    live_activities.router,
    operations.router,
    apps.router,
)

__all__ = ["ROUTERS"]
