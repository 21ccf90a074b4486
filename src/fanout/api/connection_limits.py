"""What one HTTP client may hold of `fanout serve`: connections, and time to send a request.

uvicorn keeps a connection for as long as its client likes until it has answered a first
request (its keep-alive timeout starts only after an answer), and has no limit per
address: 800 half-sent requests from one address were all held open for 20 s, 827 file
descriptors, while normal requests were answered in 0.01 s. So what a slow client takes
away is the process's descriptors, not the event loop: past the limit (often 1,024) the
server can accept no one. Here, on uvicorn's own HTTP/1.1 protocol (h11; the one it picks
without httptools):

- a request's headers must arrive within ``header_seconds`` of the connection (or, on a
  kept-alive one, of the request's first byte), else the connection is closed, with a 408
  if part of a request came (none came: a client may be sending one as it closes, and
  would take the 408 for its answer);
- its body within ``body_seconds`` of its headers, else the connection is closed (the
  route reading it sees the client gone);
- one address holds at most ``per_address`` connections; the next get 429 and are closed.

Idle kept-alive connections are uvicorn's business (closed after 5 s).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from fanout.config import Settings

log = logging.getLogger(__name__)

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: 39\r\n"
    b"retry-after: 1\r\nconnection: close\r\n\r\ntoo many connections from this address\n"
)


@dataclass(slots=True)
class ConnectionLimits:
    header_seconds: float
    body_seconds: float
    per_address: int  # 0: no limit
    held: collections.Counter[str] = field(default_factory=collections.Counter)
    refusing: set[str] = field(default_factory=set)  # addresses told of in the log

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_seconds=settings.api_header_timeout_seconds,
            body_seconds=settings.api_body_timeout_seconds,
            per_address=settings.api_max_connections_per_address,
        )


class LimitedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol under ``limits`` (a subclass per server sets them)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._address: str | None = None  # counted in limits.held while set
        self._refused = False
        self._sending: asyncio.TimerHandle | None = None  # the client's time to send is running
        self._sending_body = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if limits.per_address and self.client is not None:
            address = self.client[0]
            if limits.held[address] >= limits.per_address:
                self._refused = True
                if address not in limits.refusing:  # once until its connections are all gone
                    limits.refusing.add(address)
                    log.warning(
                        "%s holds %d connections (FANOUT_API_MAX_CONNECTIONS_PER_ADDRESS): "
                        "more are refused with 429",
                        address,
                        limits.per_address,
                    )
                transport.write(_TOO_MANY)
                transport.close()
                return
            limits.held[address] += 1
            self._address = address
        self._time_to_send(limits.header_seconds, body=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._let_go()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The connection becomes another protocol's (fanout has no WebSocket routes, but a
        # WebSocket library may be installed): uncounted here, or its count would leak.
        self._let_go()
        super().handle_websocket_upgrade(event)

    def _let_go(self) -> None:
        self._stop_timer()
        if self._address is not None:
            held = self.limits.held
            held[self._address] -= 1
            if held[self._address] <= 0:
                del held[self._address]
                self.limits.refusing.discard(self._address)
            self._address = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
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
        before the next is uvicorn's keep-alive timeout)."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if not self._sending_body:
                self._time_to_send(self.limits.body_seconds, body=True)
        elif state is h11.IDLE:
            if self._sending_body:  # a body read after its answer ended, a cycle began: no
                # keep-alive timer runs now (uvicorn set it at the answer), so this one does
                self._time_to_send(self.limits.header_seconds, body=False)
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
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:  # part of one
            self.transport.write(_TIMED_OUT)
        what = "body" if self._sending_body else "headers"
        log.debug("%s: request %s not sent in time: closed", self.client, what)
        self.transport.close()


def limited_http_protocol(settings: Settings) -> type[LimitedH11Protocol]:
    """The HTTP protocol class for one server (``uvicorn.run(http=…)``): its connections
    share one count per address."""

    class ServerProtocol(LimitedH11Protocol):
        limits = ConnectionLimits.from_settings(settings)

    return ServerProtocol
