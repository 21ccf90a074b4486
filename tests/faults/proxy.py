"""A TCP proxy on loopback that can cut every connection and refuse the next few.

Put between a worker and PostgreSQL or SQS, it makes the outage the worker would see
when that service restarts or the network drops, without touching the shared service.
The outage ends when the worker has tried to come back a given number of times, not
after a number of seconds: on a loaded machine a timed outage may fall before the
worker gets there, or last past every retry it has. It can also count what the client
sends (``watch``), so a test can act once a request is out.
"""

from __future__ import annotations

import asyncio
import contextlib


class FlakyProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._to_refuse = 0
        self._pipes: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.refused = 0  # connections refused during outages, in all
        self.restored = asyncio.Event()
        self.sent: dict[bytes, int] = {}  # watched byte strings -> times the client sent one

    async def __aenter__(self) -> FlakyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._cut()

    def outage(self, *, refuse: int) -> None:
        """Drop every open connection now, then refuse the next ``refuse`` new ones."""
        if refuse < 1:
            raise ValueError("an outage refuses at least one connection")
        self._to_refuse = refuse
        self.restored.clear()
        self._cut()

    def restore(self) -> None:
        """End the outage now: accept and forward connections again."""
        self._to_refuse = 0
        self.restored.set()

    def watch(self, pattern: bytes) -> None:
        """Count ``pattern`` in what clients send from now on, in ``sent[pattern]``
        (found within one read: fine for a header such as an SQS action's name)."""
        self.sent.setdefault(pattern, 0)

    def _cut(self) -> None:
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._to_refuse:
            self._to_refuse -= 1
            self.refused += 1
            if not self._to_refuse:
                self.restored.set()
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes.update((writer, up_writer))
        await asyncio.gather(_pump(reader, up_writer, self.sent), _pump(up_reader, writer))
        self._pipes.difference_update((writer, up_writer))


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counts: dict[bytes, int] | None = None,
) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
        while data := await reader.read(65536):
            if counts:
                for pattern in counts:
                    counts[pattern] += data.count(pattern)
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
