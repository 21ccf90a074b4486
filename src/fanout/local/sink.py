"""The local push sink: an HTTP server that receives pushes and counts them per device.

``fanout sink`` serves it on its own; ``fanout demo`` and the tests embed it. It
answers the way push services do, chosen by the token, so every outcome can be
produced on purpose:

- a token starting ``invalid`` is unregistered (like APNs 410);
- a token starting ``flaky`` is refused once per notification, then accepted (like a 503);
- a token starting ``reject`` is refused for good (like a payload the service refuses);
- anything else is delivered.

Endpoints: ``POST /push`` (what the sink provider sends: ``{collapse_key, payload,
devices: [[id, token], ...]}``, answered with one result per device) and ``GET /stats``
(``DeliveryLedger.stats()``: totals, and counts per event, known by its collapse key).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import uvicorn

from fanout.local.asgi import Receive, Scope, Send, read_body, respond
from fanout.local.ledger import EVENTS_KEPT, DeliveryLedger

__all__ = ["DeliveryLedger", "EmbeddedSink", "PushSink", "serve"]


# A notification's data key naming the one device it is for (bench/chaos.py --direct).
ADDRESSED_TO = "addressed_to_device"


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
        # The addressed check: a push whose data names its device (ADDRESSED_TO) counts
        # as checked, and as wrong when sent to another device (another event's content).
        self.addressed_checked = 0
        self.addressed_wrong = 0

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

    def _check_addressed(self, payload: Any, devices: list[Any], results: list[str]) -> None:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict) or ADDRESSED_TO not in data:
            return
        for (device_id, _), result in zip(devices, results, strict=True):
            if result == "ok":
                self.addressed_checked += 1
                self.addressed_wrong += str(device_id) != data[ADDRESSED_TO]

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
                self._check_addressed(doc.get("payload"), doc["devices"], results)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                await respond(send, 400, {"error": f"bad push request: {exc}"})
                return
            if self.delay:
                await asyncio.sleep(self.delay)
            await respond(send, 200, {"results": results})
        elif scope["method"] == "GET" and scope["path"] == "/stats":
            addressed = {"checked": self.addressed_checked, "wrong": self.addressed_wrong}
            await respond(send, 200, {**self.ledger.stats(), "addressed": addressed})
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


def serve(
    bound: socket.socket, *, listening: Callable[[str], None], events_kept: int = EVENTS_KEPT
) -> None:
    """Run a sink on the listening socket ``bound`` until interrupted (``fanout sink``);
    ``listening`` gets its URL (with the port chosen if it was bound to port 0); the
    ``events_kept`` most recent events are counted apart in ``/stats``."""
    listening("http://{}:{}".format(*bound.getsockname()[:2]))
    # No access log: a pipeline sends thousands of pushes; /stats says what came.
    sink = PushSink(DeliveryLedger(events_kept=events_kept))
    config = uvicorn.Config(sink, lifespan="off", log_level="info", access_log=False)
    uvicorn.Server(config).run(sockets=[bound])
