"""``fanout demo --console``: after the demo's event, keep the API with its operator console
and a worker running on the demo's database, queues and push services, until Ctrl-C.

The listening socket is bound before the demo starts (``fanout.runtime.listening``), so a
port in use is said at once, not after the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn

from fanout.api import create_app
from fanout.api.keys import create_api_key
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.worker import run_worker
from fanout.store import connect

CONSOLE_SCOPES = ["read", "publish", "manage"]


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: keep_serving owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def keep_serving(
    pipeline: Pipeline, listener: socket.socket, say: Callable[[str], None]
) -> None:
    """Serve the API and console, and run a worker, until SIGINT or SIGTERM."""
    conn = await connect(pipeline.settings.database_dsn())
    try:
        _, token = await create_api_key(conn, CONSOLE_SCOPES, "fanout demo --console")
    finally:
        await conn.close()
    server = _Server(uvicorn.Config(create_app(pipeline.settings), log_level="warning"))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    workers = asyncio.create_task(run_worker(pipeline.settings, stopping, pipeline=pipeline))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        host, port = listener.getsockname()[:2]
        say(f"console: http://{host}:{port}/console")
        say(f"sign in with this API key (scopes {', '.join(CONSOLE_SCOPES)}; shown once): {token}")
        say("the API, the console and a worker keep running; Ctrl-C stops them")
        await stopping.wait()
    finally:
        stopping.set()
        server.should_exit = True
        await serving
        await workers
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        listener.close()
