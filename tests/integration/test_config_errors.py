"""A mistake in the configuration, or a service that does not answer, as a newcomer meets it:
every command says so in one line naming the setting, with exit status 2 for a mistake
in the settings and 1 for a service that failed; never a traceback, never a secret."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fanout.config import Settings
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from tests.faults.proxy import FlakyProxy

SECRET = "pw-never-printed"
# Every command that reads the database; each must name FANOUT_DATABASE_URL when unset.
DATABASE_COMMANDS = [
    ["migrate"],
    ["status", "1"],
    ["apikey", "list"],
    ["apikey", "create", "--scope", "read"],
    ["apikey", "revoke", "k1"],
    ["publish", "author:1", "--title", "t"],
    ["serve"],
    ["worker"],
]
SQS_COMMANDS = [
    ["queues", "create"],
    ["queues", "list"],
    ["dlq", "list"],
    ["dlq", "redrive"],
    ["publish", "author:1", "--title", "t"],
]


@pytest.fixture
def environment(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without any FANOUT_ or AWS setting, and no AWS credentials
    to be found anywhere (no ~/.aws, no instance metadata)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "AWS_"))}
    return {
        **env,
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting is refused, and nobody else
    can take the port while the test holds it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another server listens on."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        yield other.getsockname()[1]


def fanout(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fanout", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def the_one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The command printed nothing but one line on stderr and exited with ``status``."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert SECRET not in output
    assert result.returncode == status, output
    [line] = result.stderr.splitlines()
    assert line.startswith("fanout: ")
    return line


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_an_unset_database_url_is_one_line_naming_it(
    command: list[str], environment: dict[str, str], sqs_endpoint: str
) -> None:
    env = {**environment, "FANOUT_SQS_ENDPOINT_URL": sqs_endpoint}
    line = the_one_line(fanout(env, *command), status=2)
    assert line == (
        "fanout: FANOUT_DATABASE_URL is not set: point it at your PostgreSQL "
        "(postgresql://user@host/db), or run 'fanout demo' which needs none"
    )


@pytest.mark.parametrize("command", [c for c in DATABASE_COMMANDS if c != ["worker"]], ids=" ".join)
def test_a_database_that_does_not_answer_is_named_with_its_address_and_setting(
    command: list[str], environment: dict[str, str], sqs_endpoint: str, closed_port: int
) -> None:
    env = {
        **environment,
        "FANOUT_DATABASE_URL": f"postgresql://fanout:{SECRET}@127.0.0.1:{closed_port}/fanout",
        "FANOUT_SQS_ENDPOINT_URL": sqs_endpoint,
    }
    line = the_one_line(fanout(env, *command), status=1)
    assert line == (
        f"fanout: could not reach the database at 127.0.0.1:{closed_port} "
        "(FANOUT_DATABASE_URL): connection refused"
    )


def test_a_database_that_refuses_the_login_is_named_without_the_password(
    environment: dict[str, str], server_url: str
) -> None:
    from urllib.parse import urlsplit

    server = urlsplit(server_url)
    url = f"postgresql://postgres:{SECRET}@{server.hostname}:{server.port or 5432}/no_such_db"
    line = the_one_line(fanout({**environment, "FANOUT_DATABASE_URL": url}, "migrate"), 1)
    assert f"the database at {server.hostname}:{server.port or 5432} refused fanout" in line
    assert "(FANOUT_DATABASE_URL)" in line and "no_such_db" in line


def test_the_demo_names_a_configured_database_that_does_not_answer(
    environment: dict[str, str], sqs_endpoint: str, closed_port: int
) -> None:
    env = {
        **environment,
        "FANOUT_DATABASE_URL": f"postgresql://fanout:{SECRET}@127.0.0.1:{closed_port}/fanout",
        "FANOUT_SQS_ENDPOINT_URL": sqs_endpoint,
    }
    result = fanout(env, "demo", "--subscribers", "10", "--json")
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr and SECRET not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"using the PostgreSQL at 127.0.0.1:{closed_port} (FANOUT_DATABASE_URL)"
    assert lines[-1] == (
        f"fanout: could not reach the database at 127.0.0.1:{closed_port} "
        "(FANOUT_DATABASE_URL): connection refused"
    )


@pytest.mark.parametrize("command", [*SQS_COMMANDS, ["serve"], ["worker"]], ids=" ".join)
def test_no_sqs_endpoint_and_no_aws_credentials_says_fanout_would_use_aws(
    command: list[str], environment: dict[str, str], database_url: str
) -> None:
    env = {**environment, "FANOUT_DATABASE_URL": database_url}
    line = the_one_line(fanout(env, *command), status=2)
    assert line.startswith(
        "fanout: FANOUT_SQS_ENDPOINT_URL is not set, so fanout uses AWS SQS (us-east-1), "
        "and no AWS credentials were found"
    )


@pytest.mark.parametrize("command", SQS_COMMANDS, ids=" ".join)
def test_an_sqs_endpoint_that_does_not_answer_is_named_with_its_setting(
    command: list[str], environment: dict[str, str], database_url: str, closed_port: int
) -> None:
    env = {
        **environment,
        "FANOUT_DATABASE_URL": database_url,
        "FANOUT_SQS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port}",
    }
    line = the_one_line(fanout(env, *command), status=1)
    assert line == (
        f"fanout: could not reach SQS at http://127.0.0.1:{closed_port} "
        "(FANOUT_SQS_ENDPOINT_URL): connection refused"
    )


@pytest.mark.parametrize(
    ("command", "variable", "value", "message"),
    [
        pytest.param(command, variable, value, message, id=f"{command[0]} {variable}")
        for command, variable, value, message in [
            (["migrate"], "FANOUT_PAGE_SIZE", "abc", "Input should be a valid integer"),
            (["worker"], "FANOUT_API_PORT", "70000", "less than or equal to 65535"),
            (["serve"], "FANOUT_PROVIDER", "carrier-pigeon", "String should match pattern"),
            (["serve"], "FANOUT_API_HEADER_TIMEOUT_SECONDS", "-1", "greater than 0"),
            (["serve"], "FANOUT_API_KEEP_ALIVE_SECONDS", "0", "greater than or equal to 1"),
            (["serve"], "FANOUT_API_MAX_CONNECTIONS", "-1", "greater than or equal to 0"),
            (["demo"], "FANOUT_DATABASE_URL", f"mysql://u:{SECRET}@db/x", "a postgresql:// URL"),
            (["queues", "create"], "FANOUT_QUEUE_PREFIX", "no spaces", "should match pattern"),
            (["worker"], "FANOUT_SQS_ENDPOINT_URL", "garbage", "must be an http:// or https://"),
        ]
    ],
)
def test_an_invalid_value_is_one_line_naming_the_variable(
    command: list[str], variable: str, value: str, message: str, environment: dict[str, str]
) -> None:
    line = the_one_line(fanout({**environment, variable: value}, *command), status=2)
    assert line.startswith(f"fanout: {variable} is invalid: ")
    assert message in line and value not in line


def test_every_invalid_variable_gets_its_own_line(environment: dict[str, str]) -> None:
    env = {**environment, "FANOUT_PAGE_SIZE": "abc", "FANOUT_SHARD_SIZE": "0"}
    result = fanout(env, "migrate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert sorted(line.split(" ")[1] for line in result.stderr.splitlines()) == [
        "FANOUT_PAGE_SIZE",
        "FANOUT_SHARD_SIZE",
    ]


async def read_until(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    """Lines of ``stream`` until one contains ``needle`` (the test's timeout bounds it)."""
    while line := (await stream.readline()).decode():
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"the worker ended without printing {needle!r}: {''.join(seen)}")


async def test_a_worker_without_its_database_says_so_at_once_and_keeps_trying(
    environment: dict[str, str], sqs_endpoint: str, closed_port: int
) -> None:
    env = {
        **environment,
        "FANOUT_DATABASE_URL": f"postgresql://fanout:{SECRET}@127.0.0.1:{closed_port}/fanout",
        "FANOUT_SQS_ENDPOINT_URL": sqs_endpoint,
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fanout", "worker", "--quiet", env=env, stderr=subprocess.PIPE
    )
    assert worker.stderr is not None
    seen: list[str] = []
    try:
        problem = f"could not reach the database at 127.0.0.1:{closed_port} (FANOUT_DATABASE_URL)"
        first = await read_until(worker.stderr, problem, seen)
        assert "trying again in 1s" in first
        assert "trying again in 2s" in await read_until(worker.stderr, problem, seen)
        assert worker.returncode is None  # still running, still trying
    finally:
        worker.send_signal(signal.SIGTERM)
        seen += (await worker.stderr.read()).decode().splitlines(keepends=True)
        status = await worker.wait()
    output = "".join(seen)
    assert status == 0, output
    assert "Traceback" not in output and SECRET not in output and " INFO " not in output


async def test_a_worker_without_sqs_says_so_at_once_and_starts_when_it_answers(
    environment: dict[str, str], settings: Settings
) -> None:
    async with open_client(settings) as client:
        await create_queues(client, settings)
    sqs_port = int((settings.sqs_endpoint_url or "").rsplit(":", 1)[1])
    async with FlakyProxy("127.0.0.1", sqs_port) as proxy:
        proxy.outage(refuse=10**9)  # every connection refused until restored below
        env = {
            **environment,
            "FANOUT_DATABASE_URL": settings.database_dsn(),
            "FANOUT_SQS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
            "FANOUT_QUEUE_PREFIX": settings.queue_prefix,
            "FANOUT_POLL_WAIT_SECONDS": "1",
        }
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fanout", "worker", env=env, stderr=subprocess.PIPE
        )
        assert worker.stderr is not None
        seen: list[str] = []
        try:
            problem = (
                f"could not reach SQS at http://127.0.0.1:{proxy.port} (FANOUT_SQS_ENDPOINT_URL)"
            )
            assert " ERROR " in await read_until(worker.stderr, problem, seen)
            proxy.restore()
            await read_until(worker.stderr, "worker consuming", seen)
            assert worker.returncode is None
        finally:
            worker.send_signal(signal.SIGTERM)
            seen += (await worker.stderr.read()).decode().splitlines(keepends=True)
            status = await worker.wait()
    output = "".join(seen)
    assert status == 0, output
    assert "Traceback" not in output


def test_a_metrics_port_already_taken_is_one_line_naming_it(
    environment: dict[str, str], database_url: str, closed_port: int
) -> None:
    env = {
        **environment,
        "FANOUT_DATABASE_URL": database_url,
        "FANOUT_METRICS_PORT": str(closed_port),  # bound by the test: taken
    }
    line = the_one_line(fanout(env, "worker"), status=2)
    assert line.startswith(
        f"fanout: FANOUT_METRICS_PORT: cannot serve metrics on 127.0.0.1:{closed_port}: "
    )


@pytest.mark.parametrize("option", [False, True], ids=["FANOUT_API_PORT", "--port"])
def test_an_api_port_already_taken_is_one_line_naming_it(
    environment: dict[str, str], database_url: str, sqs_endpoint: str, taken_port: int, option: bool
) -> None:
    """Not uvicorn's log of a failed start and exit status 3."""
    env = {
        **environment,
        "FANOUT_DATABASE_URL": database_url,
        "FANOUT_SQS_ENDPOINT_URL": sqs_endpoint,
    }
    if option:
        line = the_one_line(fanout(env, "serve", "--port", str(taken_port)), status=2)
    else:
        line = the_one_line(fanout({**env, "FANOUT_API_PORT": str(taken_port)}, "serve"), status=2)
    setting = "--port" if option else "FANOUT_API_PORT"
    assert line == (
        f"fanout: {setting}: cannot serve the API on 127.0.0.1:{taken_port}: Address already in use"
    )


def test_more_api_connections_than_the_process_can_open_is_one_line_naming_the_setting(
    environment: dict[str, str],
) -> None:
    """Past its limit of open files a server accepts no one: FANOUT_API_MAX_CONNECTIONS is
    held below it, with what fanout keeps for itself (the database pool, SQS)."""

    def open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    result = subprocess.run(
        [sys.executable, "-m", "fanout", "serve"],
        env={**environment, "FANOUT_API_MAX_CONNECTIONS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=open_files,
    )
    line = the_one_line(result, status=2)
    assert line.startswith(
        "fanout: FANOUT_API_MAX_CONNECTIONS is more than fanout serve can hold: its limit of "
        "open files is 256 (ulimit -n)"
    )
    assert line.endswith("or raise ulimit -n")


def test_a_sink_port_already_taken_is_one_line_naming_it(
    environment: dict[str, str], taken_port: int
) -> None:
    line = the_one_line(fanout(environment, "sink", "--port", str(taken_port)), status=2)
    assert line == (
        f"fanout: --port: cannot serve the push sink on 127.0.0.1:{taken_port}: "
        "Address already in use"
    )


@pytest.mark.parametrize("option", [False, True], ids=["FANOUT_API_PORT", "--port"])
def test_a_console_port_already_taken_is_one_line_naming_it(
    environment: dict[str, str], taken_port: int, option: bool
) -> None:
    """`fanout demo --console` binds before it starts anything, and names what chose the
    port: it said "(--port)" when FANOUT_API_PORT had."""
    if option:
        result = fanout(environment, "demo", "--console", "--port", str(taken_port))
    else:
        result = fanout({**environment, "FANOUT_API_PORT": str(taken_port)}, "demo", "--console")
    setting = "--port" if option else "FANOUT_API_PORT"
    assert the_one_line(result, status=2) == (
        f"fanout: {setting}: cannot serve the console on 127.0.0.1:{taken_port}: "
        "Address already in use"
    )


# TEST-NET-1 (RFC 5737): an address no machine running the tests has.
NOT_OURS = "192.0.2.1"


@pytest.mark.parametrize(
    ("command", "env", "named", "what"),
    [
        (["worker"], {"FANOUT_METRICS_HOST": NOT_OURS, "FANOUT_METRICS_PORT": "0"},
         "FANOUT_METRICS_HOST", "metrics"),
        (["serve"], {"FANOUT_API_HOST": NOT_OURS}, "FANOUT_API_HOST", "the API"),
        (["sink", "--host", NOT_OURS], {}, "--host", "the push sink"),
    ],
    ids=["metrics", "serve", "sink"],
)  # fmt: skip
def test_an_address_not_of_this_machine_is_one_line_naming_the_host_setting(
    environment: dict[str, str],
    database_url: str,
    command: list[str],
    env: dict[str, str],
    named: str,
    what: str,
) -> None:
    """Not the port's setting (the metrics' line named FANOUT_METRICS_PORT whatever failed)."""
    env = {**environment, "FANOUT_DATABASE_URL": database_url, **env}
    line = the_one_line(fanout(env, *command), status=2)
    assert line.startswith(f"fanout: {named}: cannot serve {what} on {NOT_OURS}:"), line
    assert line.endswith(": Cannot assign requested address"), line


@pytest.mark.parametrize(
    ("command", "what"),
    [(["sink"], "the push sink"), (["serve"], "the API"), (["demo", "--console"], "the console")],
    ids=["sink", "serve", "demo"],
)
def test_a_port_past_65535_is_one_line_naming_the_option(
    environment: dict[str, str], command: list[str], what: str
) -> None:
    """Not a traceback of socket's OverflowError."""
    line = the_one_line(fanout(environment, *command, "--port", "70000"), status=2)
    assert (
        line == f"fanout: --port: cannot serve {what} on 127.0.0.1:70000: not a port (0 to 65535)"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param(
            {"FANOUT_APNS_KEY": SECRET, "FANOUT_APNS_KEY_ID": "K", "FANOUT_APNS_TEAM_ID": "T",
             "FANOUT_APNS_TOPIC": "x"},
            "FANOUT_APNS_KEY (or _FILE) is not a PEM private key", id="apns key",
        ),
        pytest.param(
            {"FANOUT_APNS_KEY_ID": "K"},
            "APNs is configured in part: set FANOUT_APNS_KEY (or _FILE), FANOUT_APNS_TEAM_ID",
            id="apns in part",
        ),
        pytest.param(
            {"FANOUT_FCM_CREDENTIALS_FILE": "/nonexistent/fcm.json"},
            "FANOUT_FCM_CREDENTIALS_FILE: cannot read /nonexistent/fcm.json", id="fcm file",
        ),
        pytest.param(
            {"FANOUT_FCM_CREDENTIALS": "{" + SECRET}, "FANOUT_FCM_CREDENTIALS (or _FILE) is not",
            id="fcm json",
        ),
        pytest.param(
            {"FANOUT_VAPID_PRIVATE_KEY": SECRET, "FANOUT_VAPID_SUBJECT": "mailto:a@b.c"},
            "FANOUT_VAPID_PRIVATE_KEY is not a P-256 private key", id="vapid key",
        ),
    ],
)  # fmt: skip
def test_a_push_credential_fanout_cannot_use_stops_the_worker_at_start(
    settings: dict[str, str], message: str, environment: dict[str, str], closed_port: int
) -> None:
    """Found before the worker waits for anything (here SQS does not even answer), not as
    a traceback at the first push of every batch."""
    env = {
        **environment,
        **settings,
        "FANOUT_PROVIDER": "push",
        "FANOUT_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "FANOUT_SQS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port}",
    }
    line = the_one_line(fanout(env, "worker"), status=2)
    assert line.startswith(f"fanout: {message}")
