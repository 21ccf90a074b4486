"""The address a fanout process serves on (the API, the push sink, the demo's console, the
worker's metrics), bound at start.

An address that cannot be served is a mistake in a setting, not a failure to wait out: it
is said in one line naming the setting (``ConfigError``, exit status 2), not as uvicorn's
start-up log and exit status 3, an ``OSError`` line, or a traceback.
"""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

from fanout.config import ConfigError


class AddressSettings(NamedTuple):
    """What the user set to choose the host and the port: an option or a variable."""

    host: str
    port: str


def listen(host: str, port: int, what: str, settings: AddressSettings) -> socket.socket:
    """A socket listening on ``host:port`` (SO_REUSEADDR, as uvicorn binds), or
    ``ConfigError`` naming the setting to change (``cannot_serve``)."""
    try:
        return socket.create_server((host, port))
    except (OSError, OverflowError) as exc:
        raise cannot_serve(exc, host, port, what, settings) from None


def cannot_serve(
    exc: OSError | OverflowError, host: str, port: int, what: str, settings: AddressSettings
) -> ConfigError:
    """One line for a bind that failed, naming the host's setting for an address not of
    this machine or no such name (getaddrinfo's codes are < 0), else the port's: taken by
    another server, below 1024 without the right, or not a port at all."""
    if isinstance(exc, OverflowError):  # bind(): port must be 0-65535
        return ConfigError(
            f"{settings.port}: cannot serve {what} on {host}:{port}: not a port (0 to 65535)"
        )
    code = exc.errno or 0
    setting = settings.host if code < 0 or code == errno.EADDRNOTAVAIL else settings.port
    # create_server appends the address to the reason: it is already in the line.
    reason = (exc.strerror or str(exc)).split(" (while attempting to bind")[0]
    return ConfigError(f"{setting}: cannot serve {what} on {host}:{port}: {reason}")
