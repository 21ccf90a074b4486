"""Redis and PgBouncer for the tests, started for real like the other services.

Redis: FANOUT_TEST_REDIS_URL if set, else the server on 127.0.0.1:6379 if one answers,
else a ``redis-server`` of our own on a free port. PgBouncer: always our own, in
transaction pooling mode in front of the test PostgreSQL (``.ci/run`` installs both).
On a machine without them, the tests that need them are skipped, saying what to install;
with FANOUT_TEST_REQUIRE_ALL set (``.ci/run`` sets it) a missing one fails instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from fanout.local.postgres_server import free_port


def missing(program: str, install: str) -> None:
    """Skip the test (or fail it, where every part is required) for lack of ``program``."""
    why = f"{program} is not installed ({install}; .ci/run installs it)"
    if os.environ.get("FANOUT_TEST_REQUIRE_ALL"):
        raise RuntimeError(why)
    pytest.skip(why)


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not _answers("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    if url := os.environ.get("FANOUT_TEST_REDIS_URL"):
        yield url
        return
    if _answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server", "apt-get install redis-server")
        return
    port = free_port()
    log = tmp / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, process, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PgBouncer refuses to run as root; as root, run it as one of these."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no unprivileged user to run pgbouncer as")


@contextlib.contextmanager
def pgbouncer(server_url: str) -> Iterator[str]:
    """A PgBouncer in transaction pooling mode in front of ``server_url``'s server, on a
    free port; yields the server URL with the host and port swapped for PgBouncer's. Any
    database name is passed through (``* =``), so each test's database works through it."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        missing("pgbouncer", "apt-get install pgbouncer")
        return
    parts = urlsplit(server_url)
    user = parts.username or "postgres"
    port = free_port()
    # Not under pytest's tmp: its directories are private to the user running the tests,
    # and PgBouncer may be running as another (it refuses root).
    tmp = Path(tempfile.mkdtemp(prefix="fanout-pgbouncer-"))
    ini, userlist, log = tmp / "pgbouncer.ini", tmp / "userlist.txt", tmp / "pgbouncer.log"
    userlist.write_text(f'"{user}" "{parts.password or ""}"\n')
    ini.write_text(
        "[databases]\n"
        f"* = host={parts.hostname or '127.0.0.1'} port={parts.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {userlist}\n"
        "pool_mode = transaction\n"
        "max_client_conn = 500\ndefault_pool_size = 20\n"
        # asyncpg names its connections' settings at startup; PgBouncer must let them by.
        "ignore_startup_parameters = extra_float_digits,application_name\n"
        f"logfile = {log}\npidfile = {tmp / 'pgbouncer.pid'}\n"
    )
    owner = _unprivileged_user()
    if owner is not None:
        for path in (tmp, ini, userlist):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    log.touch()
    if owner is not None:
        os.chown(log, owner.pw_uid, owner.pw_gid)
    process = subprocess.Popen(
        [binary, str(ini)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        user=owner.pw_uid if owner else None,
        group=owner.pw_gid if owner else None,
    )
    try:
        _wait_for_port(port, process, log)
        netloc = f"{user}@127.0.0.1:{port}"
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
