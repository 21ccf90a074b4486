"""`fanout` commands that serve HTTP (`serve`, `sink`), run as processes on a port of their own.

A port found free can be taken by someone else (another test run on this machine)
before the process binds it. So the URL is handed out only once the process's own log
says it serves there, and a process that lost the race is started again on another
port: a test never talks to another run's server.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ATTEMPTS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_serving(
    args: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    *,
    open_files: int | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``python -m fanout *args --port N`` until it serves; returns it and its URL.

    ``timeout`` only ends a process that never comes up (a cold start on a loaded
    machine takes seconds). ``open_files``: the process's limit of file descriptors.
    """

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    for _ in range(ATTEMPTS):
        port = free_port()
        start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "fanout", *args, "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=limit_files if open_files is not None else None,
            )
        url = f"http://127.0.0.1:{port}"
        # `fanout serve` logs uvicorn's "Uvicorn running on URL", `fanout sink` prints its
        # URL: either way the URL appears once the process serves there.
        serving = url.encode()
        deadline = time.monotonic() + timeout
        while True:
            output = log.read_bytes()[start:]
            if serving in output:
                return process, url
            if process.poll() is not None:
                if b"address already in use" in output:
                    break  # lost the port to someone else: another one
                raise RuntimeError(f"fanout {args[0]} exited: {output[-2000:].decode()}")
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(f"fanout {args[0]} not serving in {timeout}s")
            time.sleep(0.05)
    raise RuntimeError(f"fanout {args[0]}: no free port in {ATTEMPTS} tries")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def refusing_url() -> Iterator[str]:
    """A loopback URL where every connection is refused while the block runs: bound but
    not listening, so no other process can serve there (port 9 may be served)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
