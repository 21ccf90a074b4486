"""`fanout serve` against clients that never finish a request (slowloris): a process
holds only so many file descriptors, and each connection it keeps is one of them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.api.conftest import ApiServer, start_server
from tests.processes import stop

# The server's limit of file descriptors, and more half-sent requests than it could hold.
OPEN_FILES = 256
SLOW_CONNECTIONS = 400
HEADER_SECONDS = 3
BODY_SECONDS = 3
PER_ADDRESS = 50


async def half_sent_request(
    host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from 127.0.0.2 whose request's headers never end."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
    writer.write(b"POST /v1/events HTTP/1.1\r\nhost: fanout\r\ncontent-length: 100\r\n")
    return reader, writer


async def how_it_ended(reader: asyncio.StreamReader) -> str:
    """The status line the server sent before closing ('reset' if it reset instead)."""
    try:
        answer = await reader.read()
    except ConnectionResetError:
        return "reset"
    return answer.split(b"\r\n", 1)[0].decode() or "closed"


async def half_sent_body(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request from 127.0.0.3 whose headers are whole and whose body never ends."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.3", 0))
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nhost: fanout\r\ncontent-type: application/json\r\n"
        b'content-length: 100\r\n\r\n{"topic": '
    )
    return reader, writer


async def test_clients_that_never_finish_a_request_cannot_take_the_server_away(
    api: ApiServer, tmp_path: Path
) -> None:
    """800 half-sent requests from one address were all held open for 20 s, so a server
    with fewer descriptors than that stopped accepting connections (issue 27.6). Now
    an address holds FANOUT_API_MAX_CONNECTIONS_PER_ADDRESS connections, the next are
    refused, headers not sent within FANOUT_API_HEADER_TIMEOUT_SECONDS end with 408, and
    a body not sent within FANOUT_API_BODY_TIMEOUT_SECONDS ends its connection."""
    process, url = await asyncio.to_thread(
        start_server,
        api.settings,
        tmp_path / "serve.log",
        open_files=OPEN_FILES,
        FANOUT_API_HEADER_TIMEOUT_SECONDS=str(HEADER_SECONDS),
        FANOUT_API_BODY_TIMEOUT_SECONDS=str(BODY_SECONDS),
        FANOUT_API_MAX_CONNECTIONS_PER_ADDRESS=str(PER_ADDRESS),
    )
    host, port = "127.0.0.1", int(url.rpartition(":")[2])
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        slow.append(await half_sent_body(host, port))
        for _ in range(SLOW_CONNECTIONS):
            slow.append(await half_sent_request(host, port))
        # A normal request from another address is answered (the timeout is generous: on
        # a loaded machine, not on a server out of descriptors, where it never would be).
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"{url}/healthz")
        assert answer.status_code == 200, answer.text
        async with asyncio.timeout(max(HEADER_SECONDS, BODY_SECONDS) + 30):
            body_ending, *endings = await asyncio.gather(
                *(how_it_ended(reader) for reader, _ in slow)
            )
    finally:
        for _, writer in slow:
            writer.close()
        await asyncio.to_thread(stop, process)
    timed_out = endings.count("HTTP/1.1 408 Request Timeout")
    refused = endings.count("HTTP/1.1 429 Too Many Requests") + endings.count("reset")
    assert timed_out + refused == SLOW_CONNECTIONS, sorted(set(endings))
    assert timed_out >= PER_ADDRESS and refused > 0
    assert body_ending in {"closed", "reset"}, body_ending


async def test_more_half_sent_requests_than_descriptors_make_room_for_a_whole_one(
    api: ApiServer, tmp_path: Path
) -> None:
    """With no limit per address (behind a proxy, every client has its address), clients
    that never finish a request could still take every descriptor until their header time
    ran out. Past FANOUT_API_MAX_CONNECTIONS (by default the process's limit of open files
    less what fanout keeps for itself), a new connection closes the oldest one still
    waiting for a request, so a request sent whole is answered at once."""
    process, url = await asyncio.to_thread(
        start_server,
        api.settings,
        tmp_path / "serve.log",
        open_files=OPEN_FILES,
        # Longer than any wait below: only the bound on connections can make room.
        FANOUT_API_HEADER_TIMEOUT_SECONDS="300",
        FANOUT_API_MAX_CONNECTIONS_PER_ADDRESS="0",
    )
    host, port = "127.0.0.1", int(url.rpartition(":")[2])
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    endings: list[asyncio.Task[str]] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            slow.append(await half_sent_request(host, port))
        endings += [asyncio.create_task(how_it_ended(reader)) for reader, _ in slow]
        # Generous for a loaded machine; a server out of descriptors would answer only
        # once the header time (300 s) freed some.
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.get(f"{url}/healthz")
        assert answer.status_code == 200, answer.text
        # The oldest were closed to make room (each had sent part of a request: 408);
        # the server holds fewer than its descriptors, so more than the excess are gone.
        async with asyncio.timeout(60):
            while sum(ending.done() for ending in endings) <= SLOW_CONNECTIONS - OPEN_FILES:
                await asyncio.sleep(0.05)
        ended = {ending.result() for ending in endings if ending.done()}
        assert ended == {"HTTP/1.1 408 Request Timeout"}, ended
    finally:
        for _, writer in slow:
            writer.close()
        for ending in endings:
            ending.cancel()
        await asyncio.to_thread(stop, process)
    log = (tmp_path / "serve.log").read_text()
    assert log.count("(FANOUT_API_MAX_CONNECTIONS)") == 1, log[-3000:]
