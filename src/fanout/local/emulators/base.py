"""What the emulators share: reading requests, answering, and forced answers."""

from __future__ import annotations

from typing import Any

from fanout.local.asgi import Receive, Scope, Send, header, read_body, respond
from fanout.local.ledger import DeliveryLedger

__all__ = ["Emulator", "Receive", "Scope", "Send", "header", "read_body", "respond"]


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
