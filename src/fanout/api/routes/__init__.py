"""The API's routes, one module per resource; ``create_app`` includes them in this order."""

from fanout.api.routes import audience, devices, events, operations, subscriptions

ROUTERS = (
    devices.router,
    subscriptions.router,
    audience.router,
    events.router,
    operations.router,
)

__all__ = ["ROUTERS"]
