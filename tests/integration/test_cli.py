"""The `fanout` commands as an operator runs them: processes, exit codes, what they print."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from fanout.config import Settings, database_address
from fanout.local.demo import DeviceShape, seed
from fanout.local.sink import EmbeddedSink
from fanout.store.migrate import available_migrations, migrate
from tests.conftest import _with_database
from tests.faults.conftest import sink_worker
from tests.processes import ATTEMPTS, free_port


def fanout(
    settings: Settings,
    *args: str,
    database_url: str | None = None,
    timeout: float = 60,
    more_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
        "FANOUT_DATABASE_URL": database_url or settings.database_dsn(),
        "FANOUT_SQS_ENDPOINT_URL": settings.sqs_endpoint_url or "",
        "FANOUT_QUEUE_PREFIX": settings.queue_prefix,
        "FANOUT_MAX_RECEIVE_COUNT": "1",
        "FANOUT_POLL_WAIT_SECONDS": "1",
        **(more_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "fanout", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_operator_commands_end_to_end(settings: Settings) -> None:
    assert fanout(settings, "migrate").returncode == 0
    assert "up to date" in fanout(settings, "migrate").stderr
    assert fanout(settings, "queues", "create").returncode == 0

    created = fanout(settings, "apikey", "create", "--scope", "read", "--name", "cli-test")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    assert key_id in fanout(settings, "apikey", "list").stdout
    assert fanout(settings, "apikey", "revoke", key_id).returncode == 0
    assert "revoked" in fanout(settings, "apikey", "list").stdout
    refused = fanout(settings, "apikey", "create", "--scope", "bogus")
    assert refused.returncode != 0 and "publish, manage, read" in refused.stderr

    published = fanout(settings, "publish", "author:cli", "--title", "Hello")
    assert published.returncode == 0, published.stderr
    status = fanout(settings, "status", published.stdout.strip())
    assert status.returncode == 0, status.stderr
    progress = orjson.loads(status.stdout)
    assert progress["status"] == "enqueued" and progress["recipients"] == 0

    # The event's fan-out message waits in its queue: one line per queue and DLQ.
    listed = fanout(settings, "queues", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["queue", "waiting", "in", "flight", "delayed"]
    prefix = settings.queue_prefix
    assert {row.split()[0]: row.split()[1:] for row in rows} == {
        f"{prefix}-fanout": ["1", "0", "0"],
        f"{prefix}-fanout-dlq": ["0", "0", "0"],
        f"{prefix}-delivery": ["0", "0", "0"],
        f"{prefix}-delivery-dlq": ["0", "0", "0"],
    }


def test_queues_help_offers_what_it_says(settings: Settings) -> None:
    shown = fanout(settings, "queues", "--help").stdout
    assert "create" in shown and "list" in shown


def test_sink_counts_each_event_apart() -> None:
    """Four events to the same two devices are eight first deliveries, not six duplicates."""
    sink = subprocess.Popen(
        [sys.executable, "-m", "fanout", "sink", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sink.stdout is not None
        url = sink.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url) as client:
            for event in ("1", "2", "3", "4", "4"):
                body = {"collapse_key": event, "payload": {}, "devices": [[7, "t7"], [8, "t8"]]}
                assert client.post("/push", json=body).json() == {"results": ["ok", "ok"]}
            stats = client.get("/stats").json()
    finally:
        sink.terminate()
        sink.wait()
    assert (stats["received"], stats["unique"], stats["duplicates"]) == (10, 8, 2)
    assert stats["duplicate_collapse_keys"] == ["4"]
    assert stats["events"] == {
        "1": {"received": 2, "unique": 2, "duplicates": 0},
        "2": {"received": 2, "unique": 2, "duplicates": 0},
        "3": {"received": 2, "unique": 2, "duplicates": 0},
        "4": {"received": 4, "unique": 2, "duplicates": 2},
    }


def test_emulators_env_prints_export_lines_a_shell_can_source(tmp_path: Path) -> None:
    emulators = subprocess.Popen(
        [sys.executable, "-m", "fanout", "emulators", "--env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert emulators.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("# auth: "):
            line = emulators.stdout.readline()
            assert line, "the emulators stopped before printing their settings"
            lines.append(line)
    finally:
        emulators.terminate()
        emulators.wait()
    script = tmp_path / "emulators.env"
    script.write_text("".join(lines))
    words = shlex.split(script.read_text(), comments=True)  # a PEM key spans lines
    assert words[::2] == ["export"] * (len(words) // 2)
    assert all(word.startswith("FANOUT_") and "=" in word for word in words[1::2])
    # What a shell makes of them, read back by the settings fanout loads.
    read_back = subprocess.run(
        ["sh", "-c", f'. "{script}" && exec "$0" -c "$1"', sys.executable,
         "from fanout.config import Settings; s = Settings(); "
         "print(s.apns_endpoint); print(s.apns_key.get_secret_value().splitlines()[0])"],
        env={k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    endpoint, first_pem_line = read_back.stdout.splitlines()
    assert endpoint.startswith("https://127.0.0.1:")
    assert first_pem_line == "-----BEGIN PRIVATE KEY-----"


def test_publish_with_an_idempotency_key_publishes_once(settings: Settings) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    args = ("publish", "author:cli-idem", "--title", "Hello", "--idempotency-key", "cli-1")
    first, again = fanout(settings, *args), fanout(settings, *args)
    assert first.returncode == again.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    refused = fanout(settings, *args[:3], "Other", *args[4:])
    assert refused.returncode == 1
    assert "different request" in refused.stderr and "Traceback" not in refused.stderr


def test_dlq_commands_show_and_redrive(settings: Settings) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    from fanout.queue.sqs import open_client, open_queues

    async def poison() -> None:
        async with open_client(settings) as client:
            queues = await open_queues(client, settings)
            await queues.delivery.send("garbage")
            [message] = await queues.delivery.receive(1, wait_seconds=1)
            await queues.delivery.dead_letter(message, "PoisonMessage: test")

    asyncio.run(poison())
    assert "delivery-dlq: 1" in fanout(settings, "dlq", "list").stdout
    shown = fanout(settings, "dlq", "show", "--queue", "delivery").stdout
    assert "PoisonMessage: test" in shown and "garbage" in shown
    assert (
        "1 message(s) moved back"
        in fanout(settings, "dlq", "redrive", "--queue", "delivery").stdout
    )
    assert "delivery-dlq: 0" in fanout(settings, "dlq", "list").stdout


@contextlib.contextmanager
def _database_without_schema(server_url: str) -> Iterator[str]:
    """A database without the schema, named for this test alone and dropped after it."""
    name = f"fanout_cli_empty_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(server_url, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    with _database_without_schema(server_url) as url:
        yield url


def test_a_missing_queue_is_one_clear_line(settings: Settings) -> None:
    result = fanout(settings, "publish", "author:x", "--title", "t")
    assert result.returncode == 1
    assert "run `fanout queues create`" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_schema_is_one_clear_line(settings: Settings, empty_database: str) -> None:
    """The line a worker says at start (not the missing relation's name)."""
    assert fanout(settings, "queues", "create").returncode == 0
    result = fanout(settings, "publish", "author:x", "--title", "t", database_url=empty_database)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr == (
        f"fanout: the database at {database_address(empty_database)} (FANOUT_DATABASE_URL) "
        "has no fanout schema: run `fanout migrate`\n"
    )


# The release before apps (as tests/integration/test_upgrade.py upgrades it).
PREVIOUS_SCHEMA = 10


@pytest.fixture
def previous_release_database(empty_database: str) -> str:
    """A database migrated as the release before apps left it: 0001 to 0010."""

    async def migrate_to_the_previous_release() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await migrate(conn, up_to=PREVIOUS_SCHEMA)
        finally:
            await conn.close()

    asyncio.run(migrate_to_the_previous_release())
    return empty_database


@pytest.mark.parametrize(
    "command",
    [["reconcile"], ["cancel", "1"], ["status", "1"], ["apikey", "create", "--scope", "read"]],
    ids=" ".join,
)
def test_a_command_on_a_schema_older_than_its_code_says_run_migrate(
    settings: Settings, previous_release_database: str, command: list[str]
) -> None:
    """As a worker says it at start: not "database error: UndefinedColumnError" and exit 1,
    nor "the schema is missing" for a schema that is there, only behind."""
    assert fanout(settings, "queues", "create").returncode == 0
    result = fanout(settings, *command, database_url=previous_release_database)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    missing = [m.name for m in available_migrations() if m.version > PREVIOUS_SCHEMA]
    assert result.stderr == (
        f"fanout: the database at {database_address(previous_release_database)} "
        f"(FANOUT_DATABASE_URL) lacks {len(missing)} of fanout's migrations "
        f"({', '.join(missing[:3])}, …): run `fanout migrate`\n"
    )


@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "0"]], ids=" ".join)
def test_a_service_on_a_database_never_migrated_stops_saying_run_migrate(
    settings: Settings, empty_database: str, command: list[str]
) -> None:
    """Not a worker logging UndefinedTableError every 5 s for ever, nor an API answering
    500 to every request: one line, exit 2, before anything is served."""
    assert fanout(settings, "queues", "create").returncode == 0
    # The timeout only ends a command that would run for ever (what this test catches).
    result = fanout(settings, *command, database_url=empty_database, timeout=60)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"fanout: the database at {database_address(empty_database)} (FANOUT_DATABASE_URL) "
        "has no fanout schema: run `fanout migrate`"
    )


def test_a_worker_on_a_schema_older_than_its_code_stops_saying_run_migrate(
    settings: Settings,
) -> None:
    assert fanout(settings, "queues", "create").returncode == 0

    async def forget_the_last_migration() -> str:
        conn = await asyncpg.connect(settings.database_dsn())
        try:
            return str(
                await conn.fetchval(
                    "DELETE FROM schema_migrations WHERE version = "
                    "(SELECT max(version) FROM schema_migrations) RETURNING name"
                )
            )
        finally:
            await conn.close()

    missing = asyncio.run(forget_the_last_migration())
    result = fanout(settings, "worker", timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"fanout: the database at {database_address(settings.database_dsn())} "
        f"(FANOUT_DATABASE_URL) lacks 1 of fanout's migrations ({missing}): run `fanout migrate`"
    )


async def test_status_wait_shows_the_event_once_it_has_ended(
    settings: Settings, sink: EmbeddedSink, tmp_path: Path
) -> None:
    """The README's first session pastes `fanout status ID --wait`: it prints the event
    delivered, not the `enqueued` with 0 recipients of the moment after publishing; with
    no worker to deliver it, it says so when the wait runs out."""
    assert (await asyncio.to_thread(fanout, settings, "queues", "create")).returncode == 0
    conn = await asyncpg.connect(settings.database_dsn())
    try:
        topic = (await seed(conn, 3, 1, DeviceShape(platforms=("apns",)))).topic
    finally:
        await conn.close()
    published = await asyncio.to_thread(fanout, settings, "publish", topic, "--title", "Hi")
    event_id = published.stdout.strip()

    alone = await asyncio.to_thread(
        fanout, settings, "status", event_id, "--wait", "--timeout", "1"
    )
    assert alone.returncode == 1
    assert orjson.loads(alone.stdout)["status"] == "enqueued"
    assert alone.stderr == (
        f"fanout: event {event_id} is still enqueued after 1s: is a worker running?\n"
    )

    worker = sink_worker(settings, "all", sink.url, tmp_path)
    worker.start()
    try:
        # The timeout only ends a test whose worker never delivers.
        waited = await asyncio.to_thread(
            fanout, settings, "status", event_id, "--wait", "--timeout", "100", timeout=120
        )
    finally:
        worker.stop()
    assert waited.returncode == 0, waited.stderr
    shown = orjson.loads(waited.stdout)
    assert (shown["status"], shown["recipients"], shown["sent"]) == ("delivered", 3, 3)
    assert sink.sink.ledger.unique == 3


README = Path(__file__).parents[2] / "README.md"


@dataclass
class Step:
    """One statement of the README's shell session and the lines it shows after it."""

    command: str
    shown: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Not inside a quoted string, nor continued by a backslash."""
        return self.command.count("'") % 2 == 0 and not self.command.endswith("\\")

    def prints(self, output: str) -> bool:
        """Whether ``output`` is what the README shows: line for line, "…" standing for
        whatever varies (an id, a time, fields left out)."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        patterns = [re.escape(shown).replace("…", ".*") for shown in self.shown]
        return len(lines) == len(patterns) and all(
            re.fullmatch(pattern, line) for pattern, line in zip(patterns, lines, strict=True)
        )


def readme_session(section: str) -> list[Step]:
    """The README section's bash blocks as statements, each with the comment lines after
    it: an output line each, one indented two spaces or more continuing the line before,
    a note in parentheses after three spaces not part of it."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.DOTALL):
        for line in block.splitlines():
            if line.startswith("#") and steps and steps[-1].complete:
                shown = line[1:]
                if shown.startswith("  "):
                    steps[-1].shown[-1] += shown.strip()
                else:
                    steps[-1].shown.append(re.split(r"\s{3,}\(", shown.strip())[0])
            elif steps and not steps[-1].complete:
                steps[-1].command += "\n" + line
            else:
                steps.append(Step(line))
    return steps


def here(steps: list[Step], database_url: str, ports: dict[int, int]) -> list[Step]:
    """The steps as they run on this machine: the test's own database instead of
    `createdb`'s, free ports for the README's (moto 5000, sink 8765, API 8000), this
    interpreter for `.venv/bin/`. What they print is as it was otherwise."""

    def moved(text: str) -> str:
        for readme_port, port in ports.items():
            text = text.replace(f"127.0.0.1:{readme_port}", f"127.0.0.1:{port}")
            text = text.replace(f"-p {readme_port} ", f"-p {port} ")
        text = text.replace(
            ".venv/bin/fanout sink ", f".venv/bin/fanout sink --port {ports[8765]} "
        )
        text = re.sub(
            r"FANOUT_DATABASE_URL=\S+", lambda _: f"FANOUT_DATABASE_URL={database_url}", text
        )
        return text.replace(".venv/bin/fanout ", f"{sys.executable} -m fanout ").replace(
            ".venv/bin/python ", f"{sys.executable} "
        )

    return [
        Step(moved(step.command), [moved(line) for line in step.shown])
        for step in steps
        if not step.command.startswith("createdb ")  # the test's database is made already
    ]


def run_session(steps: list[Step], cwd: Path, env: dict[str, str]) -> list[str]:
    """Run the steps in one bash, as pasted; what each printed. The processes it starts in
    the background are stopped at its end, or when it is ended."""
    marker = f"@@{secrets.token_hex(4)}@@"
    script = "\n".join(
        ["trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT"]
        + [f"{step.command}\nprintf '\\n{marker}\\n'" for step in steps]
    )
    bash = subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        # Only ends a session that hangs (`fanout status --wait` gives up after 120 s; the
        # wait for the API, never, if it could not bind its port).
        output, _ = bash.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(bash.pid, signal.SIGTERM)
        output, _ = bash.communicate()
    return output.split(f"\n{marker}\n")


def test_the_readmes_first_session_prints_what_it_shows(server_url: str, tmp_path: Path) -> None:
    """Pasted into a shell on an empty database, each command of "A first session, step by
    step" prints what the README shows after it, and those showing nothing print nothing.
    What a newcomer met instead: an event still `enqueued` with 0 recipients, the sink's 3
    before its 4, a list of migrations and stats grown since, the API's log among the
    answers, curl's answers run together on one line."""
    steps = readme_session("A first session, step by step")
    assert sum(bool(step.shown) for step in steps) >= 10  # the section was found and read
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "AWS_"))}
    env |= {
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "FANOUT_POLL_WAIT_SECONDS": "1",  # so that the worker stops at once at the end
    }
    for attempt in range(ATTEMPTS):
        # A port found free may be taken before a server binds it: then try others.
        ports = {readme_port: free_port() for readme_port in (5000, 8765, 8000)}
        cwd = tmp_path / f"attempt-{attempt}"
        cwd.mkdir()
        with _database_without_schema(server_url) as database_url:
            here_steps = here(steps, database_url, ports)
            printed = run_session(
                here_steps,
                cwd,
                env | {"FANOUT_API_PORT": str(ports[8000]),
                       "FANOUT_SINK_URL": f"http://127.0.0.1:{ports[8765]}"},
            )  # fmt: skip
        logs = "".join(log.read_text() for log in cwd.glob("*.log"))
        if "Address already in use" not in logs:
            break
    assert len(printed) == len(here_steps) + 1, printed  # every step ran, then the trap
    differing = [
        f"{step.command}\n  printed: {output.strip()!r}\n  shown:   {step.shown!r}"
        for step, output in zip(here_steps, printed, strict=False)
        if not step.prints(output)
    ]
    assert not differing, "\n".join(differing)


def test_publish_later_then_cancel(settings: Settings) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    published = fanout(
        settings,
        "publish",
        "author:later",
        "--title",
        "Soon",
        "--send-at",
        "2099-01-01T09:00:00Z",
        "--quiet-hours",
        "drop",
    )
    assert published.returncode == 0, published.stderr
    event_id = published.stdout.strip()
    assert orjson.loads(fanout(settings, "status", event_id).stdout)["status"] == "scheduled"
    cancelled = fanout(settings, "cancel", event_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert orjson.loads(cancelled.stdout)["status"] == "cancelled"
    assert fanout(settings, "cancel", "999999").returncode == 1


def test_a_bad_publish_option_names_it(settings: Settings) -> None:
    refused = fanout(settings, "publish", "author:x", "--title", "t", "--deliver-at-local", "9am")
    assert refused.returncode == 2
    assert "--deliver-at-local" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_bad_filter_names_the_option_and_the_field(settings: Settings) -> None:
    not_json = fanout(settings, "publish", "author:x", "--title", "t", "--filter", "{plan")
    assert not_json.returncode == 2 and "--filter" in not_json.stderr
    bad = fanout(
        settings,
        "publish",
        "author:x",
        "--title",
        "t",
        "--filter",
        '{"tags": {"age": {"gte": "18"}}}',
    )
    assert bad.returncode == 2
    assert "--filter" in bad.stderr and "filter.tags.age.gte" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_filter_alone_publishes_to_the_app(settings: Settings) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    alone = fanout(settings, "publish", "--title", "t", "--filter", '{"tags": {"plan": "x"}}')
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip().isdigit()
    neither = fanout(settings, "publish", "--title", "t")
    assert neither.returncode == 2 and "--filter" in neither.stderr


def test_publish_each_kind_from_the_command_line(settings: Settings) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    background = fanout(
        settings, "publish", "author:k", "--kind", "background", "--data", "book=1001",
        "--data", "note=a=b",
    )  # fmt: skip
    alert = fanout(
        settings, "publish", "author:k", "--title", "Chapter 12", "--thread-id", "book-1",
        "--interruption-level", "time-sensitive",
    )  # fmt: skip
    assert background.returncode == alert.returncode == 0, background.stderr + alert.stderr

    async def stored(event_id: str) -> object:
        conn = await asyncpg.connect(settings.database_dsn())
        try:
            return orjson.loads(
                await conn.fetchval("SELECT notification FROM events WHERE id = $1", int(event_id))
            )
        finally:
            await conn.close()

    assert asyncio.run(stored(background.stdout.strip())) == {
        "kind": "background", "data": {"book": "1001", "note": "a=b"},
    }  # fmt: skip
    assert asyncio.run(stored(alert.stdout.strip())) == {
        "title": "Chapter 12", "thread_id": "book-1", "interruption_level": "time-sensitive",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "option", "says"),
    [
        (("--kind", "background", "--title", "t"), "--title", "background push shows nothing"),
        (("--body", "no title"), "--title", "required for an alert"),
        (("--kind", "silent"), "--kind", "'alert', 'background'"),
        (("--kind", "background", "--data", "book"), "--data", "'book' is not KEY=VALUE"),
        (("--kind", "background", "--data", "from=me"), "--data", "from"),
        (("--title", "t", "--interruption-level", "critical"), "--interruption-level",
         "FANOUT_APNS_ALLOW_CRITICAL"),
    ],
)  # fmt: skip
def test_a_publish_its_kind_refuses_names_the_option(
    settings: Settings, args: tuple[str, ...], option: str, says: str
) -> None:
    refused = fanout(settings, "publish", "author:k", *args)
    assert refused.returncode == 2
    assert option in refused.stderr and says in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr


def test_an_apps_allow_critical_is_set_from_the_command_line_and_lets_it_publish(
    settings: Settings,
) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    app = f"crit-{secrets.token_hex(3)}"
    assert fanout(settings, "apps", "create", app).returncode == 0
    critical = ("publish", "author:k", "--title", "t", "--interruption-level", "critical")
    refused = fanout(settings, *critical, "--app", app)
    assert refused.returncode == 2 and "--interruption-level" in refused.stderr
    bad = fanout(settings, "apps", "settings", app, "--allow-critical", "yes")
    assert bad.returncode == 2 and "--allow-critical" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    changed = fanout(settings, "apps", "settings", app, "--allow-critical", "true")
    assert changed.returncode == 0 and "allow critical: true" in changed.stdout, changed.stderr
    assert "critical alerts: allowed" in fanout(settings, "apps", "show", app).stdout
    shown = orjson.loads(fanout(settings, "apps", "show", app, "--json").stdout)
    assert shown["allow_critical"] is True
    published = fanout(settings, *critical, "--app", app)
    assert published.returncode == 0, published.stderr
    # Another app, without a setting of its own, is refused (the deployment's default).
    assert fanout(settings, *critical).returncode == 2
    reset = fanout(settings, "apps", "settings", app, "--allow-critical", "default")
    assert "allow critical: default" in reset.stdout, reset.stderr
    assert fanout(settings, *critical, "--app", app).returncode == 2


def test_frequency_caps_from_the_command_line(settings: Settings) -> None:
    set_ = fanout(settings, "caps", "set", "digest", "--max", "3", "--window", "86400")
    assert set_.returncode == 0 and "set the cap of digest" in set_.stderr
    changed = fanout(settings, "caps", "set", "*", "--max", "10", "--window", "3600")
    assert changed.returncode == 0, changed.stderr
    listed = fanout(settings, "caps", "list").stdout.splitlines()
    assert [line.split() for line in listed] == [
        ["*", "10", "per", "3600s"],
        ["digest", "3", "per", "86400s"],
    ]
    bad = fanout(settings, "caps", "set", "Digest!", "--max", "3", "--window", "60")
    assert bad.returncode == 2 and "CATEGORY" in bad.stderr
    zero = fanout(settings, "caps", "set", "digest", "--max", "0", "--window", "60")
    assert zero.returncode == 2 and "--max" in zero.stderr
    assert fanout(settings, "caps", "delete", "digest").returncode == 0
    assert fanout(settings, "caps", "delete", "digest").returncode == 1


def test_publish_batch_from_an_ndjson_file(settings: Settings, tmp_path: Path) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    lines = [
        {"user_id": "cli-b1", "notification": {"title": "Your order shipped"}},
        {"user_id": "cli-b2", "notification": {"title": "x"}, "idempotency_key": "b-1"},
        {"user_id": "cli-b2"},  # no notification
        {"user_id": "cli-b3", "notification": {"title": "later"}, "send_at": "2099-01-01T00:00Z"},
    ]
    path = tmp_path / "sends.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\nnot json\n")
    first = fanout(settings, "publish", "--batch", str(path))
    assert first.returncode == 1, first.stderr  # lines 3 and 5 were refused
    shown = [orjson.loads(line) for line in first.stdout.splitlines()]
    assert [s["line"] for s in shown] == [1, 2, 3, 4, 5]
    assert shown[0]["created"] and shown[1]["created"] and shown[3]["created"]
    assert shown[2]["errors"][0]["loc"] == ["line 3", "notification"]
    assert shown[4]["errors"][0]["loc"] == ["line 5"]
    statuses = [
        orjson.loads(fanout(settings, "status", str(shown[i]["event_id"])).stdout)["status"]
        for i in (0, 3)
    ]
    assert statuses[0] in ("pending", "enqueued") and statuses[1] == "scheduled"
    # The idempotency key holds across runs: line 2 is the same event, not created again.
    again = fanout(settings, "publish", "--batch", str(path))
    assert orjson.loads(again.stdout.splitlines()[1]) == {**shown[1], "created": False}
    both = fanout(settings, "publish", "author:x", "--batch", str(path))
    assert both.returncode == 2 and "not both" in both.stderr


def test_live_activity_tokens_and_updates_from_the_command_line(settings: Settings) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    token = "ab" * 32
    added = fanout(
        settings, "live-activities", "tokens", "add", "match:cli", "--user", "reader-1",
        "--token", token.upper(), "--topic", "team:lyon", "--apns-environment", "sandbox",
    )  # fmt: skip
    assert added.returncode == 0 and "registered" in added.stderr, added.stderr
    again = fanout(
        settings, "live-activities", "tokens", "add", "match:cli", "--user", "reader-1",
        "--token", token,
    )  # fmt: skip
    assert again.returncode == 0 and "refreshed" in again.stderr, again.stderr
    assert again.stdout.strip() == added.stdout.strip()
    listed = fanout(settings, "live-activities", "tokens", "list", "match:cli", "--json")
    [row] = orjson.loads(listed.stdout)
    assert row == {
        "id": int(added.stdout), "user": "reader-1", "kind": "activity",
        "token_end": token[-8:], "topic": None, "apns_environment": "production",
        "active": True,
    }  # fmt: skip
    assert token not in listed.stdout  # a token addresses a device: never shown whole
    other = fanout(settings, "live-activities", "tokens", "list", "match:never")
    assert other.returncode == 0 and other.stdout == ""

    update = fanout(
        settings, "live-activities", "update", "match:cli", "--event", "update",
        "--content-state", '{"score": "1-0"}', "--priority", "10",
    )  # fmt: skip
    assert update.returncode == 0, update.stderr
    assert "priority-10 updates of the activity in the last hour: 1" in update.stderr

    async def stored(event_id: str) -> object:
        conn = await asyncpg.connect(settings.database_dsn())
        try:
            return orjson.loads(
                await conn.fetchval("SELECT notification FROM events WHERE id = $1", int(event_id))
            )
        finally:
            await conn.close()

    notification = asyncio.run(stored(update.stdout.strip()))
    assert isinstance(notification, dict)
    assert notification["kind"] == "liveactivity"
    assert notification["live_activity"]["content_state"] == {"score": "1-0"}


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--event", "pause", "--content-state", "{}"), "--event"),
        (("--event", "update", "--content-state", "{not json"), "--content-state"),
        (("--event", "update"), "--content-state"),
        (("--event", "update", "--content-state", "{}", "--priority", "7"), "--priority"),
    ],
)
def test_a_live_activity_update_refused_names_the_option(
    settings: Settings, args: tuple[str, ...], option: str
) -> None:
    refused = fanout(settings, "live-activities", "update", "match:cli", *args)
    assert refused.returncode == 2, refused.stderr
    assert option in refused.stderr and "Traceback" not in refused.stderr


async def test_sources_commands(settings: Settings, pool: asyncpg.Pool) -> None:
    from tests.integration.test_sourced_topics import FOLLOWERS, follow_table

    await follow_table(pool)
    await pool.execute(
        "INSERT INTO books.follows (author_id, follower_id) VALUES (7, 11), (7, 12), (8, 13)"
    )
    unindexed = FOLLOWERS.replace("books.follows", "books.unindexed_follows")
    refused = await asyncio.to_thread(
        fanout, settings, "sources", "add", "author:", "--query", unindexed
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("fanout: --query: refused: the plan scans the table: Seq Scan")
    no_key = await asyncio.to_thread(
        fanout, settings, "sources", "add", "author:", "--query", "SELECT 1 AS user_id"
    )
    assert no_key.returncode == 2 and "--query: the query must use :key" in no_key.stderr
    added = await asyncio.to_thread(
        fanout, settings, "sources", "add", "author:", "--query", FOLLOWERS, "--column", "user_id"
    )
    assert added.returncode == 0, added.stderr
    listed = await asyncio.to_thread(fanout, settings, "sources", "list")
    assert listed.stdout.startswith("author:") and "$1::text::bigint" in listed.stdout
    tested = await asyncio.to_thread(fanout, settings, "sources", "test", "author:", "7")
    assert tested.returncode == 0, tested.stderr
    assert tested.stdout.split() == ["2", "user(s)", "for", "author:7", "11", "12"]
    deleted = await asyncio.to_thread(fanout, settings, "sources", "delete", "author:")
    assert deleted.returncode == 0, deleted.stderr
    again = await asyncio.to_thread(fanout, settings, "sources", "delete", "author:")
    assert again.returncode == 1 and "no source author:" in again.stderr


async def test_without_a_usable_source_role_migrate_says_so_and_sources_are_refused(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    from tests.integration.test_sourced_topics import FOLLOWERS, follow_table

    await follow_table(pool)
    # fanout's own user (a superuser here) would be no sandbox: refused, as a role fanout's
    # user may not create is, in one line naming the setting.
    user = await pool.fetchval("SELECT current_user")
    env = {"FANOUT_SOURCE_ROLE": user}
    migrated = await asyncio.to_thread(fanout, settings, "migrate", more_env=env)
    assert migrated.returncode == 0, migrated.stderr  # nothing else needs the role
    assert f"sources are off: FANOUT_SOURCE_ROLE={user}: a source's query must not run" in (
        migrated.stderr
    )
    refused = await asyncio.to_thread(
        fanout, settings, "sources", "add", "author:", "--query", FOLLOWERS, more_env=env
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"fanout: FANOUT_SOURCE_ROLE={user}: ")
    assert len(refused.stderr.splitlines()) == 1
    assert await pool.fetchval("SELECT count(*) FROM sources") == 0
