"""moto's SQS server in a process of its own, to kill and bring back on purpose.

moto keeps its queues in memory, so SIGKILL is an SQS endpoint that lost every
message; ``start()`` brings it back on the same port, empty, so workers holding its
URL reconnect without being told (their queues must be created again, as
``fanout queues create`` does). The fault tests and ``bench/chaos.py`` use it;
``fanout demo`` runs moto in-process instead (``services.local_sqs_server``).

Run as a program (``python -m fanout.local.sqs_server --port N``) it is moto's
server without moto's copy of every message ever sent.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from fanout.local.postgres_server import free_port


class MotoServer:
    """``python -m fanout.local.sqs_server`` on a loopback port, as a child process."""

    def __init__(self, *, port: int | None = None, log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server; returns once it accepts connections on its port."""
        if self.running:
            return
        output: IO[Any] | int = subprocess.DEVNULL
        if self.log_file is not None:
            output = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(  # noqa: S603 (our own arguments, no shell)
                [sys.executable, "-m", "fanout.local.sqs_server", "--port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        finally:
            if not isinstance(output, int):
                output.close()
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"moto's server did not listen on {self.port} in {timeout}s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the endpoint vanishes with every queue and message it held."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=0.5),
    ):
        return True
    return False


def main() -> None:
    from moto import server

    from fanout.local.services import _stop_moto_keeping_every_message

    parser = argparse.ArgumentParser(description="moto's SQS server on loopback")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _stop_moto_keeping_every_message()
    server.main(["-H", "127.0.0.1", "-p", str(args.port)])


if __name__ == "__main__":
    main()
