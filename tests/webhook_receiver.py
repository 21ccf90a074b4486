"""A webhook receiver for the tests: a local HTTP server verifying every call's signature
with the ``standardwebhooks`` package (an implementation fanout did not write)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import standardwebhooks

from tests.processes import free_port


@dataclass
class Received:
    webhook_id: str
    body: bytes
    message: dict[str, Any]


@dataclass
class Receiver:
    """An HTTP server that verifies every call (a failed verification is kept, and fails
    the test) and answers 204; down until ``up()``. ``hold``: calls wait until it is set.
    ``refusing``: it answers that status with a 1 MB body instead (and counts nothing)."""

    secret: str = ""
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)  # requests whose body never all arrived
    hold: threading.Event | None = None
    seen: threading.Event = field(default_factory=threading.Event)
    refusing: int | None = None
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def up(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (a SIGKILL): no call,
                    receiver.cut.append(self.headers.get("webhook-id", ""))  # nothing to
                    return  # verify or answer; its row is sent again after its lease
                receiver.seen.set()
                if receiver.hold is not None:
                    receiver.hold.wait()
                headers = {k.lower(): v for k, v in self.headers.items()}
                if receiver.refusing is not None:
                    answer = b"busy, try later " * 65536
                    self.send_response(receiver.refusing)
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    with contextlib.suppress(OSError):  # the sender reads only the start
                        self.wfile.write(answer)
                    return
                try:
                    message = standardwebhooks.Webhook(receiver.secret).verify(body, headers)
                except standardwebhooks.WebhookVerificationError as exc:
                    receiver.unverified.append(f"{headers.get('webhook-id')}: {exc}")
                    self.send_response(400)
                else:
                    receiver.received.append(Received(headers["webhook-id"], body, message))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            if self.hold is not None:
                self.hold.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def by_id(self) -> dict[str, list[Received]]:
        found: dict[str, list[Received]] = defaultdict(list)
        for one in self.received:
            found[one.webhook_id].append(one)
        return found
