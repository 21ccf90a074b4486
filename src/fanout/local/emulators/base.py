"""What the emulators share: reading requests, answering, and forced answers."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from fanout.local.asgi import Receive, Scope, Send, header, read_body, respond
from fanout.local.ledger import DeliveryLedger

__all__ = [
    "AcceptedPush", "Emulator", "Receive", "Scope", "Send", "header", "read_body", "respond",
]  # fmt: skip


_NOT_KEPT = {b"authorization", b"host"}


@dataclass(frozen=True)
class AcceptedPush:
    """One request a service accepted, as it came: what a test asserts the wire form on."""

    token: str  # the device token, FCM registration token or Web Push subscription id
    # Lower-case names, without authorization (the emulator checks it) and host (the
    # server's rendering of HTTP/2's :authority, the same for every request).
    headers: dict[str, str]
    payload: Any  # the JSON body as the device gets it (Web Push: decrypted)


class Emulator:
    """Counts accepted pushes per token; ``answers`` overrides the answer for a token.
    With ``keep_accepted`` set, every accepted request is kept in ``accepted`` (tests
    only: a benchmark's millions would not fit)."""

    def __init__(self) -> None:
        self.ledger = DeliveryLedger()
        # token -> answers to give, one per request, before answering normally again
        self.answers: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = {}
        self.keep_accepted = False
        self.accepted: list[AcceptedPush] = []
        # (token, credential) -> accepted pushes, when set (``record_signers()``): which
        # credential (APNs key id, FCM project, VAPID public key) signed each push a token got.
        self.signers: collections.Counter[tuple[str, str]] | None = None
        # token -> the fo_open each accepted push carried (None: none), when set
        # (``record_open_tokens()``): what a test checks against the device and event.
        self.open_tokens: dict[str, list[str | None]] | None = None

    def record_signers(self) -> collections.Counter[tuple[str, str]]:
        """Count, from now on, each accepted push by its token and the credential it came with."""
        self.signers = collections.Counter()
        return self.signers

    def record_open_tokens(self) -> dict[str, list[str | None]]:
        """Keep, from now on, the ``fo_open`` of every accepted push, by its token."""
        self.open_tokens = {}
        return self.open_tokens

    def open_token_of(self, payload: Any) -> str | None:
        """Where the app finds the open token: a top-level key (APNs, Web Push)."""
        found = payload.get("fo_open") if isinstance(payload, dict) else None
        return found if isinstance(found, str) else None

    def accept(
        self, scope: Scope, token: str, collapse_key: str, payload: Any, credential: str = ""
    ) -> None:
        """Count the push for its token (and keep it whole if asked)."""
        self.ledger.record(token, collapse_key)
        if self.signers is not None:
            self.signers[token, credential] += 1
        if self.open_tokens is not None:
            self.open_tokens.setdefault(token, []).append(self.open_token_of(payload))
        if self.keep_accepted:
            headers = {
                key.decode(): value.decode()
                for key, value in scope["headers"]
                if key not in _NOT_KEPT
            }
            self.accepted.append(AcceptedPush(token, headers, payload))

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
