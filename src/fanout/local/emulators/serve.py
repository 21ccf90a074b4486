"""Serve an emulator over HTTPS with HTTP/2 on a free loopback port: hypercorn, or granian.

hypercorn is pure Python and can send GOAWAY after a number of requests, which the tests
use. granian (HTTP/2 in Rust) is for load: measured with the APNs emulator in its own
process, hypercorn spent ~175 µs of CPU per request and granian ~87 µs
(docs/performance.md), so only granian keeps up with a delivery worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from fanout.local.emulators.tls import TestCertificates


@contextlib.asynccontextmanager
async def serve_tls(
    app: Any,
    certificates: TestCertificates,
    port: int = 0,
    *,
    requests_per_connection: int = 2**31,
    server: str = "hypercorn",
    protocols: tuple[str, ...] = ("h2", "http/1.1"),
) -> AsyncIterator[str]:
    """Yields the base URL (https://127.0.0.1:PORT) while the server runs.

    ``requests_per_connection``: after that many, the server sends GOAWAY and closes the
    connection (push services keep one for hours; tests lower it to exercise GOAWAY).
    hypercorn closes at once, dropping the answers to streams it had accepted.
    ``protocols``: what ALPN may choose (hypercorn); ``("http/1.1",)`` is a push service
    that speaks only HTTP/1.1.
    """
    if server == "granian":
        async with _serve_granian(app, certificates, port) as url:
            yield url
        return
    sock = socket.create_server(("127.0.0.1", port))
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.certfile = certificates.cert_file
    config.keyfile = certificates.key_file
    config.alpn_protocols = list(protocols)
    config.accesslog = None
    config.errorlog = None
    # APNs allows 1,000 streams a connection; hypercorn's priority tree (the `priority`
    # package) holds at most 1,000 streams counting its root, and the 1,000th stream's
    # TooManyStreamsError stalls the whole connection: no answer, no PING ACK, ever.
    config.h2_max_concurrent_streams = 999
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


@contextlib.asynccontextmanager
async def _serve_granian(app: Any, certificates: TestCertificates, port: int) -> AsyncIterator[str]:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP2Settings
    from granian.server.embed import Server

    if not port:  # granian binds by number: take a free one
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
    server = Server(
        app,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGINL,
        http=HTTPModes.auto,  # HTTP/2 by ALPN; HTTP/1.1 for the OAuth token endpoint (google-auth)
        http2_settings=HTTP2Settings(max_concurrent_streams=1000),
        ssl_cert=Path(certificates.cert_file),
        ssl_key=Path(certificates.key_file),
        log_enabled=False,
        backpressure=4096,
    )
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.sleep(0.3)
        if task.done():
            task.result()  # raises what stopped it
        yield f"https://127.0.0.1:{port}"
    finally:
        server.stop()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
