"""What the emulators share: reading requests, answering, and forced answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from fanout.sink_server import DeliveryLedger

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Emulator:
    """Counts accepted pushes per token; ``answers`` overrides the answer for a token."""

    def __init__(self) -> None:
        self.ledger = DeliveryLedger()
        # token -> answers to give, one per request, before answering normally again
        self.answers: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = {}

    def answer_with(
        self,
        token: str,
        status: int,
        body: dict[str, Any] | None = None,
        *,
        times: int = 1_000_000,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.answers[token] = [(status, body or {}, headers or {})] * times

    def forced(self, token: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        queue = self.answers.get(token)
        if not queue:
            return None
        answer = queue.pop()
        if not queue:
            del self.answers[token]
        return answer


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(
    send: Send, status: int, body: Any = None, headers: dict[str, str] | None = None
) -> None:
    content = b"" if body is None else orjson.dumps(body)
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if body is not None:
        raw_headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})


def header(scope: Scope, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in scope["headers"]:
        if key == wanted:
            return str(value.decode())
    return None
