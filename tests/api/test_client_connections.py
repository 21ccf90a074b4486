"""The bounds on what one HTTP client may hold (api/connection_limits.py), on uvicorn in
this process with a tiny app: a kept-alive connection's next request has its own time,
a connection that says nothing is not kept, and an address's count of connections goes
down as they end, however they end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from fanout.api.connection_limits import ConnectionLimits, limited_http_protocol
from fanout.config import Settings
from fanout.local.asgi import read_body

HEADER_SECONDS = 0.5
PER_ADDRESS = 2
REQUEST = b"POST /x HTTP/1.1\r\nhost: fanout\r\ncontent-length: 2\r\n\r\n{}"


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """Answers how many bytes of body it got (/early: at once, reading none); refuses
    WebSockets, as fanout's API does."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close"})
    elif scope["type"] == "http":
        body = b"" if scope["path"] == "/early" else await read_body(receive)
        got = str(len(body)).encode()
        headers = [(b"content-length", str(len(got)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": got})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Served:
    address: tuple[str, int]
    limits: ConnectionLimits

    async def open_becomes(self, count: int) -> None:
        """Until the server counts ``count`` connections in all."""
        async with asyncio.timeout(10):
            while self.limits.open != count:
                await asyncio.sleep(0.01)

    async def held_becomes(self, count: int) -> None:
        """Until the server counts ``count`` connections from 127.0.0.1 (it sees a client
        close a moment after the client did)."""
        async with asyncio.timeout(10):
            while self.limits.held["127.0.0.1"] != count:
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serving(
    *, header_seconds: float = HEADER_SECONDS, per_address: int = PER_ADDRESS, most: int = 0
) -> AsyncIterator[Served]:
    """uvicorn on a loopback port with ``limited_http_protocol``: ``per_address``
    connections from one address, ``most`` in all."""
    protocol = limited_http_protocol(
        Settings(
            api_header_timeout_seconds=header_seconds,
            api_body_timeout_seconds=60,
            api_max_connections_per_address=per_address,
        ),
        most,
    )
    config = uvicorn.Config(
        echo,
        http=protocol,
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=60,  # the idle gap between requests is uvicorn's, here long
    )
    listener = socket.create_server(("127.0.0.1", 0))
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield Served(listener.getsockname()[:2], protocol.limits)
    server.should_exit = True
    await task
    listener.close()


@pytest.fixture
async def server() -> AsyncIterator[Served]:
    async with serving() as served:
        yield served


async def answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head.split(b"\r\n", 1)[0] + b" " + await reader.readexactly(length)


async def test_a_connection_that_sends_nothing_is_closed(server: Served) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    async with asyncio.timeout(HEADER_SECONDS + 10):
        said = await reader.read()
    writer.close()
    assert said == b""  # no 408: it could pass for the answer to a request sent meanwhile
    await server.held_becomes(0)


async def test_a_body_left_unread_by_its_route_then_finished_leaves_no_connection_behind(
    server: Served,
) -> None:
    """The route answered before the body came (413-like); the body's end starts a new
    cycle after uvicorn set its keep-alive timer, so none ran: the header time does."""
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"POST /early HTTP/1.1\r\nhost: fanout\r\ncontent-length: 4\r\n\r\n")
    assert await answer(reader) == b"HTTP/1.1 200 OK 0"
    writer.write(b"{}{}")  # the rest of the body, after the answer
    async with asyncio.timeout(HEADER_SECONDS + 10):
        said = await reader.read()
    writer.close()
    assert said == b""


async def test_a_kept_alive_connections_next_request_has_its_own_time_for_its_headers(
    server: Served,
) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(REQUEST)
    assert await answer(reader) == b"HTTP/1.1 200 OK 2"
    # Idle for longer than the header time: the gap between requests is not counted.
    await asyncio.sleep(HEADER_SECONDS * 2)
    writer.write(REQUEST)
    assert await answer(reader) == b"HTTP/1.1 200 OK 2"
    writer.write(REQUEST[:20])  # the third request's headers never end
    async with asyncio.timeout(HEADER_SECONDS + 10):
        said = await reader.read()
    writer.close()
    assert said.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_an_address_holds_its_limit_of_connections_and_gets_each_back_as_one_ends() -> None:
    # Five minutes (the most allowed) to send headers: the connections that send none end
    # as the test ends them, not when a loaded machine has taken half a second to get there.
    async with serving(header_seconds=300) as server:
        first = await asyncio.open_connection(*server.address)
        second = await asyncio.open_connection(*server.address)
        reader, writer = await asyncio.open_connection(*server.address)  # one too many
        refused = await reader.read()
        writer.close()
        assert refused.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        assert refused.endswith(b"too many connections from this address\n")
        await server.held_becomes(PER_ADDRESS)
        # One ends by asking for a WebSocket (the app has none: closed by another protocol).
        reader, writer = first
        writer.write(
            b"GET /ws HTTP/1.1\r\nhost: fanout\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
            b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        assert (await reader.read()).startswith(b"HTTP/1.1 403")
        writer.close()
        await server.held_becomes(PER_ADDRESS - 1)
        second[1].close()  # and one by its client
        await server.held_becomes(0)
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(REQUEST)
        assert await answer(reader) == b"HTTP/1.1 200 OK 2"
        writer.close()


async def test_past_its_connections_a_server_closes_the_one_waiting_longest_for_a_request() -> None:
    # Headers have all the time they need here: only the bound on connections ends one.
    async with serving(header_seconds=300, per_address=0, most=2) as server:
        silent = await asyncio.open_connection(*server.address)
        kept = await asyncio.open_connection(*server.address)
        kept[1].write(REQUEST)
        assert await answer(kept[0]) == b"HTTP/1.1 200 OK 2"  # kept alive, idle since
        await server.open_becomes(2)
        reader, writer = await asyncio.open_connection(*server.address)  # one too many
        writer.write(REQUEST)
        assert await answer(reader) == b"HTTP/1.1 200 OK 2"
        assert await silent[0].read() == b""  # waited longest: made room (it sent nothing)
        # Then the one idle since its answer (the new one's answer came later).
        late = await asyncio.open_connection(*server.address)
        assert await kept[0].read() == b""
        late[1].write(REQUEST)
        assert await answer(late[0]) == b"HTTP/1.1 200 OK 2"
        for _, each in (silent, kept, late, (reader, writer)):
            each.close()


async def test_a_server_whose_connections_are_all_in_a_request_answers_a_new_one_503() -> None:
    async with serving(header_seconds=300, per_address=0, most=2) as server:
        sending = [await asyncio.open_connection(*server.address) for _ in range(2)]
        for _, writer in sending:  # headers whole, body to come: each is in a request
            writer.write(REQUEST[:-2])
        await server.open_becomes(2)
        while server.limits.waiting:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(*server.address)
        refused = await reader.read()
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert refused.endswith(b"\r\n\r\ntoo many connections\n")
        for reader, writer in sending:
            writer.write(REQUEST[-2:])
            assert await answer(reader) == b"HTTP/1.1 200 OK 2"
            writer.close()
