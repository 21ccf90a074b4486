"""An HTTP/1.1 proxy in front of a push service that can be made slow, or hang.

A push service that stops answering does not stop receiving: a request it took may
have been delivered even though its answer never comes back, and the client, after
its timeout, can only send it again. ``StallingProxy`` makes exactly that happen in
front of the local sink: every request still reaches the sink (which counts the push)
while the proxy delays its answer or holds it back until a hang is over.

``bench/chaos.py`` puts one between the delivery workers and the sink; the stall is
switched on from the event loop it runs in. Only what the sink and fanout's sink
provider speak is handled: keep-alive HTTP/1.1, bodies with Content-Length or chunked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Stall:
    start: float
    end: float
    delay: float | None  # seconds added to each answer; None: held until ``end``


class StallingProxy:
    """Forwards every request to ``upstream`` and applies the stalls in force to the answers."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._stalls: list[_Stall] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0
        self.forwarded = 0
        self.delayed = 0
        self.held = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer_after(self, delay: float, *, for_seconds: float, starting_in: float = 0.0) -> None:
        """For ``for_seconds`` (from ``starting_in`` seconds on), every answer comes
        ``delay`` seconds late."""
        start = time.monotonic() + starting_in
        self._stalls.append(_Stall(start, start + for_seconds, delay))

    def hang(self, *, for_seconds: float, starting_in: float = 0.0) -> None:
        """For ``for_seconds``, requests still reach the service but no answer leaves
        until the hang is over."""
        start = time.monotonic() + starting_in
        self._stalls.append(_Stall(start, start + for_seconds, None))

    async def __aenter__(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while request := await _read_message(reader):
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                upstream[1].write(request)
                await upstream[1].drain()
                answer = await _read_message(upstream[0])
                if not answer:
                    break
                self.forwarded += 1
                await self._stall()
                writer.write(answer)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # either side went away, or spoke something this proxy does not handle
        finally:
            self._connections.discard(task)
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    with contextlib.suppress(OSError, RuntimeError):
                        w.close()

    async def _stall(self) -> None:
        now = time.monotonic()
        for stall in self._stalls:
            if stall.start <= now < stall.end:
                if stall.delay is None:
                    self.held += 1
                    await asyncio.sleep(stall.end - now)
                else:
                    self.delayed += 1
                    await asyncio.sleep(stall.delay)
                return


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 request or response, as the bytes it came in; b"" at a clean end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return b""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        parts = [head]
        while True:
            size_line = await reader.readuntil(b"\r\n")
            parts.append(size_line)
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    parts.append(trailer)
                parts.append(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size + 2))
    length = int(headers.get(b"content-length", b"0"))
    return head + await reader.readexactly(length)
