"""What HTTP clients may hold of `fanout serve`: connections, and time to send a request.

uvicorn keeps a connection for as long as its client likes until it has answered a first
request (its keep-alive timeout starts only after an answer), and has no limit per
address nor in all: 800 half-sent requests from one address were all held open for 20 s,
827 file descriptors, while normal requests were answered in 0.01 s. So what slow clients
take away is the process's descriptors, not the event loop: past the limit (often 1,024)
the server can accept no one. Here, on uvicorn's own HTTP/1.1 protocol (h11; the one it
picks without httptools):

- a request's headers must arrive within ``header_seconds`` of the connection (or, on a
  kept-alive one, of the request's first byte), else the connection is closed, with a 408
  if part of a request came (none came: a client may be sending one as it closes, and
  would take the 408 for its answer);
- its body within ``body_seconds`` of its headers, else the connection is closed (the
  route reading it sees the client gone);
- one address holds at most ``per_address`` connections; the next get 429 and are closed;
- the process holds at most ``max_connections``, fewer than its descriptors
  (``connection_budget``): past it a new connection closes the one that has waited longest
  for a request (part of one sent: 408; a kept-alive one idle: closed, as uvicorn's
  keep-alive timeout does), or gets 503 when every connection is in a request. Clients
  that never finish a request make room for one that sends its request whole.

Idle kept-alive connections are uvicorn's business (``timeout_keep_alive``,
FANOUT_API_KEEP_ALIVE_SECONDS); uvicorn's ``limit_concurrency`` does not bound descriptors
(it answers 503 to requests on the connections it keeps, and half-sent ones send none).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from fanout.config import ConfigError, Settings
from fanout.queue.sqs import SQS_POOL_CONNECTIONS

log = logging.getLogger(__name__)

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _refusal(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: text/plain\r\ncontent-length: "
        + str(len(text)).encode()
        + b"\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
        + text
    )


_TOO_MANY = _refusal(b"429 Too Many Requests", b"too many connections from this address\n")
_FULL = _refusal(b"503 Service Unavailable", b"too many connections\n")
_FULL_LOGGED_EVERY = 60.0  # seconds

# What `fanout serve` keeps of its descriptors besides the connections it serves: its
# database pool (FANOUT_DATABASE_POOL_SIZE), its SQS client's, and these for itself (logs,
# the event loop, DNS, ...). Measured: 15 open once started, 44 after 50 concurrent
# requests (the pool, SQS and the clients' connections included).
_OWN_FILES = 64
_BACKLOG = 2048  # uvicorn's default


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    max_connections: int  # 0: no limit
    backlog: int  # the listening socket's


def connection_budget(settings: Settings, open_files: int | None) -> ConnectionBudget:
    """The connections `fanout serve` may hold and its listening socket's backlog, with
    ``open_files`` descriptors (its RLIMIT_NOFILE; None: no limit): FANOUT_API_MAX_CONNECTIONS,
    by default every descriptor but those fanout keeps for itself. ``ConfigError`` if the
    setting asks more, or too few descriptors are left.

    One wake-up of the event loop accepts a whole backlog before the protocol sees one of
    its connections (asyncio up to the backlog, libuv until none is left), so the backlog
    comes out of the budget too: a burst of connections never takes the last descriptor."""
    wanted = settings.api_max_connections
    if open_files is None:
        return ConnectionBudget(wanted, _BACKLOG)
    kept = settings.database_pool_size + SQS_POOL_CONNECTIONS + _OWN_FILES
    room = open_files - kept
    backlog = max(1, min(_BACKLOG, room // 4))
    most = room - backlog
    limits = (
        f"its limit of open files is {open_files} (ulimit -n), of which {kept} are kept for "
        f"the database pool (FANOUT_DATABASE_POOL_SIZE), SQS and itself"
    )
    if most < 1:
        raise ConfigError(f"fanout serve cannot hold a connection: {limits}; raise ulimit -n")
    if wanted > most:
        raise ConfigError(
            f"FANOUT_API_MAX_CONNECTIONS is more than fanout serve can hold: {limits} and "
            f"{backlog} for connections being accepted; at most {most}, or raise ulimit -n"
        )
    return ConnectionBudget(wanted or most, backlog)


@dataclass(slots=True)
class ConnectionLimits:
    header_seconds: float
    body_seconds: float
    per_address: int  # 0: no limit
    max_connections: int = 0  # 0: no limit
    held: collections.Counter[str] = field(default_factory=collections.Counter)
    refusing: set[str] = field(default_factory=set)  # addresses told of in the log
    open: int = 0  # connections held, every address's
    # Held connections waiting for a request, the longest waiting first (a dict keeps the
    # order of insertion): the first is closed when a new one needs its room. A request
    # costs one insert and one pop here, 0.12 us (bench/api.py: no change within its noise).
    waiting: dict[LimitedH11Protocol, None] = field(default_factory=dict)
    full_logged: float = -math.inf  # when the event loop's clock last said all were held

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int = 0) -> ConnectionLimits:
        return cls(
            header_seconds=settings.api_header_timeout_seconds,
            body_seconds=settings.api_body_timeout_seconds,
            per_address=settings.api_max_connections_per_address,
            max_connections=max_connections,
        )


class LimitedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol under ``limits`` (a subclass per server sets them)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counted = False  # in limits.open
        self._address: str | None = None  # counted in limits.held while set
        self._ended = False  # refused or closed here: what the client sends is dropped
        self._sending: asyncio.TimerHandle | None = None  # the client's time to send is running
        self._sending_body = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        address = self.client[0] if self.client is not None else None
        if limits.per_address and address and limits.held[address] >= limits.per_address:
            if address not in limits.refusing:  # once until its connections are all gone
                limits.refusing.add(address)
                log.warning(
                    "%s holds %d connections (FANOUT_API_MAX_CONNECTIONS_PER_ADDRESS): "
                    "more are refused with 429",
                    address,
                    limits.per_address,
                )
            self._refuse(_TOO_MANY)
            return
        if limits.max_connections and limits.open >= limits.max_connections:
            now = self.loop.time()
            if now - limits.full_logged >= _FULL_LOGGED_EVERY:
                limits.full_logged = now
                log.warning(
                    "fanout serve holds %d connections (FANOUT_API_MAX_CONNECTIONS): a new "
                    "one closes the one waiting longest for a request, or gets 503 if every "
                    "one is in a request (said at most once a minute)",
                    limits.max_connections,
                )
            if not limits.waiting:
                self._refuse(_FULL)
                return
            next(iter(limits.waiting))._end("closed to make room for a new connection")
        limits.open += 1
        self._counted = True
        if limits.per_address and address is not None:
            limits.held[address] += 1
            self._address = address
        self._time_to_send(limits.header_seconds, body=False)
        limits.waiting[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._let_go()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The connection becomes another protocol's (fanout has no WebSocket routes, but a
        # WebSocket library may be installed): uncounted here, or its count would leak.
        self._let_go()
        super().handle_websocket_upgrade(event)

    def _refuse(self, answer: bytes) -> None:
        self._ended = True
        self.transport.write(answer)
        self.transport.close()

    def _let_go(self) -> None:
        self._stop_timer()
        limits = self.limits
        limits.waiting.pop(self, None)
        if self._counted:
            self._counted = False
            limits.open -= 1
        if self._address is not None:
            held = limits.held
            held[self._address] -= 1
            if held[self._address] <= 0:
                del held[self._address]
                limits.refusing.discard(self._address)
            self._address = None

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        if self._sending is None and self.conn.their_state is h11.IDLE:
            self._time_to_send(self.limits.header_seconds, body=False)  # a next request begins
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()  # a pipelined request may have begun

    def _follow_request(self) -> None:
        """Headers in: the body's time starts; request whole: no time runs (the idle gap
        before the next is uvicorn's keep-alive timeout). No request under way: the
        connection waits for one (since its last answer, or since it was made)."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._sending_body:  # a body read after its answer ended, a cycle began: no
                # keep-alive timer runs now (uvicorn set it at the answer), so this one does
                self._time_to_send(self.limits.header_seconds, body=False)
            waiting = self.limits.waiting
            if self not in waiting and self._counted and not self.transport.is_closing():
                waiting[self] = None
            return
        self.limits.waiting.pop(self, None)
        if state is h11.SEND_BODY:
            if not self._sending_body:
                self._time_to_send(self.limits.body_seconds, body=True)
        else:
            self._stop_timer()

    def _time_to_send(self, seconds: float, *, body: bool) -> None:
        self._stop_timer()
        self._sending_body = body
        self._sending = self.loop.call_later(seconds, self._too_slow)

    def _stop_timer(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
            self._sending = None
        self._sending_body = False

    def _too_slow(self) -> None:
        self._sending = None
        self._end(f"request {'body' if self._sending_body else 'headers'} not sent in time")

    def _end(self, why: str) -> None:
        """Close the connection here, uncounted at once (its room is taken next): with a
        408 if part of a request came."""
        self._let_go()
        self._ended = True
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:  # part of one
            self.transport.write(_TIMED_OUT)
        log.debug("%s: %s: closed", self.client, why)
        self.transport.close()


def limited_http_protocol(settings: Settings, max_connections: int = 0) -> type[LimitedH11Protocol]:
    """The HTTP protocol class for one server (``uvicorn.run(http=…)``): its connections
    share one count per address, and one in all (at most ``max_connections``; 0: no limit)."""

    class ServerProtocol(LimitedH11Protocol):
        limits = ConnectionLimits.from_settings(settings, max_connections)

    return ServerProtocol
