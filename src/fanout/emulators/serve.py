"""Serve an emulator over HTTPS with HTTP/2 (hypercorn), on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from fanout.emulators.tls import TestCertificates


@contextlib.asynccontextmanager
async def serve_tls(
    app: Any,
    certificates: TestCertificates,
    port: int = 0,
    *,
    requests_per_connection: int = 2**31,
) -> AsyncIterator[str]:
    """Yields the base URL (https://127.0.0.1:PORT) while the server runs.

    ``requests_per_connection``: after that many, the server sends GOAWAY and closes the
    connection (push services keep one for hours; tests lower it to exercise GOAWAY).
    """
    sock = socket.create_server(("127.0.0.1", port))
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.certfile = certificates.cert_file
    config.keyfile = certificates.key_file
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = None
    config.h2_max_concurrent_streams = 1000  # what APNs allows per connection
    config.keep_alive_max_requests = requests_per_connection
    url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    stopping = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stopping.wait))
    try:
        await asyncio.sleep(0.05)
        yield url
    finally:
        stopping.set()
        await task
        with contextlib.suppress(OSError):  # hypercorn closes the descriptor it was given
            sock.close()
