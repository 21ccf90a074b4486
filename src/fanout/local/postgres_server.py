"""A PostgreSQL server of one's own, to restart and stop on purpose.

The fault tests and ``bench/chaos.py`` restart PostgreSQL under a running pipeline
(``pg_ctl restart -m fast`` or ``-m immediate``). That cannot be done to a shared
server, and pgserver's embedded one offers no restart, so ``PrivatePostgres`` runs
the binaries itself: ``initdb`` into a temporary directory, ``postgres`` on a free
loopback port, and ``pg_ctl`` for everything after.

PostgreSQL refuses to run as root; as root, every binary runs as an unprivileged
user (``nobody`` unless told otherwise) who owns the data directory, as pgserver
does. From a fresh directory to accepting connections takes about a second; a
restart, either mode, about 0.2 s.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

ShutdownMode = Literal["smart", "fast", "immediate"]

# A throwaway server on a machine shared with others: small, and never fsync'd. Without
# fsync a commit still reaches the kernel before it returns, so a server killed with
# `-m immediate` recovers every committed transaction from its WAL; only an operating
# system crash would lose anything, and then the whole directory is thrown away anyway.
_CONFIG = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",  # loopback TCP only: no socket file to own or clean
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "'64MB'",
    "max_connections": "200",
}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def postgres_bin_dir() -> Path:
    """Where initdb, pg_ctl and postgres are: pgserver's bundled build, else PATH."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    found = shutil.which("pg_ctl")
    if found is None:
        raise RuntimeError(
            "no PostgreSQL binaries: pip install 'fanout[demo]' (pgserver) or put pg_ctl on PATH"
        )
    return Path(found).parent


class PrivatePostgres:
    """One PostgreSQL server in a temporary directory, on a free loopback port.

    ``with PrivatePostgres() as pg:`` creates and starts it and removes it afterwards;
    ``pg.dsn`` reaches it as the superuser ``postgres`` (trust authentication, loopback
    only). The port stays the same across ``restart``, ``stop`` and ``start``, so
    clients reconnect to the same URL.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        bin_dir: Path | None = None,
        os_user: str = "nobody",
        config: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.bin_dir = bin_dir or postgres_bin_dir()
        self.config = {**_CONFIG, **(config or {})}
        # As root, run every binary as this user; otherwise as ourselves.
        self._account = pwd.getpwnam(os_user) if os.geteuid() == 0 else None
        self.base_dir: Path | None = None
        self._running = False

    # --- where -------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("the server has no data directory yet: call init() or start()")
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    @property
    def dsn(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._running

    # --- life --------------------------------------------------------------------------

    def init(self) -> None:
        """Create the data directory (``initdb``) and write the server's settings."""
        if self.base_dir is not None:
            return
        self.base_dir = Path(tempfile.mkdtemp(prefix="fanout-private-pg-"))
        if self._account is not None:
            os.chown(self.base_dir, self._account.pw_uid, self._account.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )
        settings = "".join(f"{name} = {value}\n" for name, value in self.config.items())
        settings += f"port = {self.port}\n"
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# fanout.local.postgres_server\n" + settings)

    def start(self) -> None:
        """Start the server (creating it first if needed); returns once it accepts connections."""
        self.init()
        if not self._running:
            atexit.register(self.cleanup)
        self._pg_ctl("start")
        self._running = True

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """``pg_ctl stop -m mode``: fast aborts open transactions and disconnects every
        client; immediate kills the server without a checkpoint, so the next start is a
        crash recovery."""
        if self._running:
            self._pg_ctl("stop", "-m", mode)
            self._running = False

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """Stop (``-m mode``) and start again on the same port; returns once it accepts
        connections."""
        self._pg_ctl("restart", "-m", mode)
        self._running = True

    def cleanup(self) -> None:
        """Stop the server at once and delete its directory."""
        atexit.unregister(self.cleanup)
        if self._running:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.stop("immediate")
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> PrivatePostgres:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    # --- running the binaries -----------------------------------------------------------

    def _pg_ctl(self, action: str, *options: str) -> None:
        self._run(
            "pg_ctl",
            action,
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",  # return once the server is ready (or gone), not once signalled
            "-t",
            "60",
            *options,
        )

    def _run(self, program: str, *args: str) -> None:
        """Run one of the server's programs as its owner; a failure raises with its output."""
        assert self.base_dir is not None
        account = self._account
        # Output to a file, not a pipe: `pg_ctl start` leaves the postmaster behind, and a
        # pipe it inherited would keep us waiting for an end of file that never comes.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(  # noqa: S603 (our own arguments, no shell)
                [str(self.bin_dir / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,  # the server's user may not be allowed into ours
                timeout=90,
                check=False,
                user=None if account is None else account.pw_uid,
                group=None if account is None else account.pw_gid,
                extra_groups=None if account is None else [],  # none of root's groups
            )
            if result.returncode != 0:
                output.seek(0)
                said = output.read().decode(errors="replace").strip()
                log = ""
                with contextlib.suppress(OSError):
                    log = self.log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"{program} {' '.join(args)} failed ({result.returncode}): {said}\n{log}"
                )
