"""``fanout worker`` as a child process: to run the real thing, kill it and start it again.

The fault tests and ``bench/chaos.py`` run their workers this way, each with its own
``FANOUT_*`` environment and log file, as a deployment would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

# What the worker logs once it polls its queues (runtime/worker.py, at INFO).
CONSUMING = "worker consuming"


def worker_environment(fanout: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its FANOUT_* variables, plus ``fanout``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    return {**inherited, **fanout}


class WorkerProcess:
    """One ``python -m fanout worker --role ROLE``, logging to ``log_file``."""

    def __init__(self, role: str, env: Mapping[str, str], log_file: Path) -> None:
        self.role = role
        self.env = dict(env)
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start it (again); its log goes on in the same file."""
        with self.log_file.open("ab") as log:
            log.write(f"--- start {self.starts + 1} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(  # noqa: S603 (our own arguments, no shell)
                [sys.executable, "-m", "fanout", "worker", "--role", self.role],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def wait_until_consuming(self, timeout: float = 60.0) -> None:
        """Until this start's log says the worker polls its queues."""
        deadline = time.monotonic() + timeout
        marker = f"--- start {self.starts} ---"
        while time.monotonic() < deadline:
            text = self.log_file.read_text(errors="replace")
            if CONSUMING in text[text.rfind(marker) :]:
                return
            if not self.running:
                raise RuntimeError(f"{self.role} worker exited: {text[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.role} worker did not start consuming within {timeout:g}s")

    def kill(self) -> None:
        """SIGKILL: nothing in flight is finished, released or recorded."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, as a deployment stops it; SIGKILL if it is not gone in ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
