"""The sink provider: delivers to a local push sink (``fanout sink``) over HTTP.

It stands in for APNs, FCM and Web Push in the demo and the tests, and answers
like them: the sink can reject a token as invalid, ask for a retry or fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from fanout.metrics import count_outcomes
from fanout.notification import RenderedNotification
from fanout.providers.base import DELIVERED, Device, Outcome, OutcomeKind, Provider
from fanout.providers.transport import retry_after_seconds
from fanout.queue.messages import WIRE_PLATFORMS

# Devices per HTTP request to the sink: large enough that HTTP overhead is noise.
CHUNK = 1000
_ANSWERS = {
    "ok": DELIVERED,
    "invalid": Outcome(OutcomeKind.INVALID_TOKEN, reason="sink: unregistered"),
    "permanent": Outcome(OutcomeKind.PERMANENT, reason="sink: rejected"),
}


class SinkProvider(Provider):
    platforms = frozenset(WIRE_PLATFORMS)

    def __init__(self, url: str, *, concurrency: int = 8) -> None:
        self.url = url.rstrip("/") + "/push"
        self._client = httpx.AsyncClient(
            timeout=30.0, limits=httpx.Limits(max_connections=concurrency)
        )

    async def send(
        self, notification: RenderedNotification, devices: Sequence[Device]
    ) -> list[Outcome]:
        chunks = [devices[i : i + CHUNK] for i in range(0, len(devices), CHUNK)]
        answers = await asyncio.gather(*(self._send_chunk(notification, c) for c in chunks))
        outcomes = [outcome for chunk in answers for outcome in chunk]
        count_outcomes("sink", outcomes)
        return outcomes

    async def _send_chunk(
        self, notification: RenderedNotification, devices: Sequence[Device]
    ) -> list[Outcome]:
        body = {
            "collapse_key": notification.collapse_key,
            "payload": notification.payload(),
            "devices": [[d.id, d.token] for d in devices],
        }
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            return [Outcome(OutcomeKind.RETRY, reason=f"sink unreachable: {exc!r}")] * len(devices)
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            outcome = Outcome(OutcomeKind.RETRY, retry_after, f"sink: HTTP {response.status_code}")
            return [outcome] * len(devices)
        if response.status_code != 200:
            outcome = Outcome(OutcomeKind.PERMANENT, reason=f"sink: HTTP {response.status_code}")
            return [outcome] * len(devices)
        results = response.json()["results"]
        retry = Outcome(OutcomeKind.RETRY, reason="sink: try later")
        return [_ANSWERS.get(answer, retry) for answer in results]

    async def aclose(self) -> None:
        await self._client.aclose()
