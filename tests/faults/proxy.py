"""A TCP proxy on loopback that can cut every connection and refuse new ones for a while.

Put between a worker and PostgreSQL or SQS, it makes the outage the worker would see
when that service restarts or the network drops, without touching the shared service.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class FlakyProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._down_until = 0.0
        self._pipes: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def __aenter__(self) -> FlakyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._cut()

    def outage(self, seconds: float) -> None:
        """Drop every open connection now and refuse new ones for ``seconds``."""
        self._down_until = time.monotonic() + seconds
        self._cut()

    def restore(self) -> None:
        """Accept and forward connections again from now on."""
        self._down_until = 0.0

    def _cut(self) -> None:
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._down_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes.update((writer, up_writer))
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        self._pipes.difference_update((writer, up_writer))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
