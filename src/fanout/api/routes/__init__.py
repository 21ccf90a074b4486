"""The API's routes, one module per resource; ``create_app`` includes them in this order."""

from fanout.api.routes import devices, events, operations, subscriptions

ROUTERS = (devices.router, subscriptions.router, events.router, operations.router)

__all__ = ["ROUTERS"]
