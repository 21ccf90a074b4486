"""The local push sink: an HTTP server that receives pushes and counts them per device.

``fanout sink`` serves it on its own; ``fanout demo`` and the tests embed it. It
answers the way push services do, chosen by the token, so every outcome can be
produced on purpose:

- a token starting ``invalid`` is unregistered (like APNs 410);
- a token starting ``flaky`` is refused once per notification, then accepted (like a 503);
- a token starting ``reject`` is refused for good (like a payload the service refuses);
- anything else is delivered.

Endpoints: ``POST /push`` (what the sink provider sends), ``GET /stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import uvicorn

from fanout.local.asgi import Receive, Scope, Send, read_body, respond


class DeliveryLedger:
    """How many times each device received a push.

    Given the range of device ids to expect, counts live in a bytearray (one byte
    per device), so a million devices cost a megabyte, not a dict of a million ints.
    """

    def __init__(self, expected_ids: range | None = None) -> None:
        self._range = expected_ids or range(0)
        self._dense = bytearray(len(self._range))
        self._sparse: dict[int | str, int] = {}
        self.received = 0
        self.duplicates = 0
        self.unique = 0
        self.duplicate_collapse_keys: set[str] = set()

    def expect(self, expected_ids: range) -> None:
        """Count these ids densely from now on (before anything was recorded)."""
        if self.received:
            raise RuntimeError("expect() must come before the first push")
        self._range = expected_ids
        self._dense = bytearray(len(expected_ids))

    def record(self, device_id: int | str, collapse_key: str) -> None:
        self.received += 1
        if isinstance(device_id, int) and device_id in self._range:
            index = device_id - self._range.start
            seen = self._dense[index]
            self._dense[index] = min(seen + 1, 255)
        else:
            seen = self._sparse.get(device_id, 0)
            self._sparse[device_id] = seen + 1
        if seen:
            self.duplicates += 1
            self.duplicate_collapse_keys.add(collapse_key)
        else:
            self.unique += 1

    def count(self, device_id: int | str) -> int:
        if isinstance(device_id, int) and device_id in self._range:
            return self._dense[device_id - self._range.start]
        return self._sparse.get(device_id, 0)

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "duplicate_collapse_keys": sorted(self.duplicate_collapse_keys)[:100],
        }


class PushSink:
    """The ASGI application.

    Faults can be switched on to test what the pipeline does when a push service
    misbehaves: ``delay`` (seconds per request), ``unavailable_for`` (answer 503) and
    ``throttle_for`` (answer 429 with Retry-After).
    """

    def __init__(self, ledger: DeliveryLedger | None = None) -> None:
        self.ledger = ledger or DeliveryLedger()
        self._refused_once: set[tuple[int, str]] = set()
        self.delay = 0.0
        self._unavailable_until = 0.0
        self._throttled_until = 0.0
        self._retry_after = 1
        self.refusals: list[tuple[float, int]] = []  # (when, status) of each 429/503

    def unavailable_for(self, seconds: float) -> None:
        self._unavailable_until = time.monotonic() + seconds

    def throttle_for(self, seconds: float, retry_after: int) -> None:
        self._throttled_until = time.monotonic() + seconds
        self._retry_after = retry_after

    def _refusal(self) -> tuple[int, dict[str, str]] | None:
        now = time.monotonic()
        if now < self._unavailable_until:
            self.refusals.append((now, 503))
            return 503, {}
        if now < self._throttled_until:
            self.refusals.append((now, 429))
            return 429, {"retry-after": str(self._retry_after)}
        return None

    def answer(self, device_id: int, token: str, collapse_key: str) -> str:
        if token.startswith("invalid"):
            return "invalid"
        if token.startswith("reject"):
            return "permanent"
        if token.startswith("flaky") and (device_id, collapse_key) not in self._refused_once:
            self._refused_once.add((device_id, collapse_key))
            return "retry"
        self.ledger.record(device_id, collapse_key)
        return "ok"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST" and scope["path"] == "/push":
            body = await read_body(receive)
            if (refusal := self._refusal()) is not None:
                await respond(send, refusal[0], {"error": "try later"}, refusal[1])
                return
            try:
                doc = orjson.loads(body)
                collapse_key = str(doc["collapse_key"])
                results = [self.answer(int(d), str(t), collapse_key) for d, t in doc["devices"]]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                await respond(send, 400, {"error": f"bad push request: {exc}"})
                return
            if self.delay:
                await asyncio.sleep(self.delay)
            await respond(send, 200, {"results": results})
        elif scope["method"] == "GET" and scope["path"] == "/stats":
            await respond(send, 200, self.ledger.stats())
        else:
            await respond(send, 404, {"error": "not found"})


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the embedding program owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EmbeddedSink:
    """A sink served on loopback from inside the running event loop."""

    def __init__(self, sink: PushSink, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sink = sink
        self._socket = socket.create_server((host, port))
        self.url = "http://{}:{}".format(*self._socket.getsockname()[:2])
        config = uvicorn.Config(sink, lifespan="off", log_level="warning", access_log=False)
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EmbeddedSink:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._socket.close()


def serve(host: str, port: int) -> None:
    """Run a sink until interrupted (``fanout sink``)."""
    uvicorn.run(PushSink(), host=host, port=port, lifespan="off", log_level="info")
