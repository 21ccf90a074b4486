"""The HTTP API: ``create_app(settings)`` builds the ASGI application."""

from fanout.api.app import create_app

__all__ = ["create_app"]
