"""A TCP proxy on loopback that can cut every connection and refuse the next few.

Put between a worker and PostgreSQL or SQS, it makes the outage the worker would see
when that service restarts or the network drops, without touching the shared service.
The outage ends when the worker has tried to come back a given number of times, not
after a number of seconds: on a loaded machine a timed outage may fall before the
worker gets there, or last past every retry it has. It can also count what the client
sends (``watch``), so a test can act once a request is out, lose the reply to one
PostgreSQL statement after the server has committed it (``drop_reply_to``), and keep
every reply from a connection whose client sent a given request (``hold_replies_to``), as
a service that never answers it would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class FlakyProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._to_refuse = 0
        self._pipes: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.refused = 0  # connections refused during outages, in all
        self.accepted_at: list[float] = []  # when each connection came, refused or not
        self.restored = asyncio.Event()
        self.sent: dict[bytes, int] = {}  # watched byte strings -> times the client sent one
        self._drop_reply_to: bytes | None = None
        self.replies_dropped = 0  # statements run whose reply the client never saw
        self._hold_replies_to: bytes | None = None
        self.holding = 0  # connections whose replies are kept from their client

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

    def drop_reply_to(self, statement: bytes) -> None:
        """Once, for the next client that sends ``statement`` (its text, as PostgreSQL's
        Parse message carries it): let the server run and commit it, then cut that
        connection before a byte of its result reaches the client, which sees the
        connection drop and cannot know the statement committed."""
        self._drop_reply_to = statement

    def hold_replies_to(self, request: bytes) -> None:
        """From now on, a connection whose client sends ``request`` (a byte string found
        within one read, such as an SQS action's name) gets no reply again: the server's
        answers are read and thrown away, and the client waits as if none were coming."""
        self._hold_replies_to = request

    def _cut(self) -> None:
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted_at.append(asyncio.get_running_loop().time())
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
        doomed = asyncio.Event()
        held = asyncio.Event()

        def doom_if_matched(data: bytes) -> None:
            if self._drop_reply_to is not None and self._drop_reply_to in data:
                self._drop_reply_to = None  # once
                doomed.set()
            if self._hold_replies_to is not None and self._hold_replies_to in data:
                if not held.is_set():
                    self.holding += 1
                held.set()

        def cut() -> None:
            self.replies_dropped += 1
            writer.transport.abort()
            up_writer.transport.abort()

        await asyncio.gather(
            _pump(reader, up_writer, self.sent, inspect=doom_if_matched),
            _pump_replies(up_reader, writer, doomed, cut, held),
        )
        self._pipes.difference_update((writer, up_writer))


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counts: dict[bytes, int] | None = None,
    inspect: Callable[[bytes], None] | None = None,
) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
        while data := await reader.read(65536):
            if inspect is not None:  # before the server can have it
                inspect(data)
            if counts:
                for pattern in counts:
                    counts[pattern] += data.count(pattern)
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()


# PostgreSQL's replies to running a statement (extended protocol): BindComplete, DataRow,
# CommandComplete, EmptyQueryResponse. A prepare's replies (ParseComplete,
# ParameterDescription, RowDescription, NoData) are let through: the client must get them
# to go on and run the statement.
_RUNNING = frozenset(b"2DCI")
_READY_FOR_QUERY = ord("Z")


async def _pump_replies(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    doomed: asyncio.Event,
    cut: Callable[[], None],
    held: asyncio.Event,
) -> None:
    """Server to client. Once ``doomed`` (the client sent the statement: the server's
    stream is between messages, as the client waits for each reply before it sends more),
    read PostgreSQL's messages one by one: forward them until the statement runs, then keep
    its result from the client and ``cut`` at the ReadyForQuery that follows (sent once
    the statement's transaction has committed). Once ``held``, nothing is forwarded."""
    pending = b""
    running = False
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
        while data := await reader.read(65536):
            if held.is_set():
                continue
            if not doomed.is_set():
                writer.write(data)
                await writer.drain()
                continue
            pending += data
            while len(pending) >= 5:
                end = 1 + int.from_bytes(pending[1:5])
                if len(pending) < end:
                    break
                message, pending = pending[:end], pending[end:]
                running = running or message[0] in _RUNNING
                if running and message[0] == _READY_FOR_QUERY:
                    cut()
                    return
                if not running:
                    writer.write(message)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
