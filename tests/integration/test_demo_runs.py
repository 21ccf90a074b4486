"""`fanout demo` as a user runs it: a process, its exit status and its last line."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from fanout.credentials.sealing import generate_key
from fanout.store import connect
from fanout.store.migrate import available_migrations, migrate


def run_demo(
    env: dict[str, str],
    subscribers: int,
    *,
    says: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
) -> dict:  # type: ignore[type-arg]
    """The demo's summary; ``says``: lines it must print on stderr, in this order."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanout",
            "demo",
            "--subscribers",
            str(subscribers),
            "--json",
            *options,
        ],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict = orjson.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[type-arg]
    lines = result.stderr.splitlines()
    said = [lines.index(line) for line in says]  # each one, whole, on a line of its own
    assert said == sorted(said), result.stderr
    return summary


def test_demo_with_nothing_configured_delivers_every_device_once() -> None:
    summary = run_demo(
        {},
        3000,
        says=(
            "starting an embedded PostgreSQL (FANOUT_DATABASE_URL is not set) …",
            "starting moto's SQS server on loopback (FANOUT_SQS_ENDPOINT_URL is not set) …",
            "applying the schema migrations …",
            "starting the local push sink …",
            "seeding 3,000 subscribers with 1 device each …",
        ),
    )
    assert summary["database"] == "embedded PostgreSQL"
    assert summary["delivered"] == summary["devices"] == 3000
    assert (summary["failed"], summary["duplicates"]) == (0, 0)
    for key in ("subscribers", "seconds", "notifications_per_second"):
        assert key in summary


def test_demo_with_preferences_holds_back_its_shares_and_the_sink_agrees(
    database_url: str,
) -> None:
    summary = run_demo({"FANOUT_DATABASE_URL": database_url}, 2000, options=("--preferences",))
    # Consecutive user ids: each band of the mix (by id modulo 100) is exactly its share.
    # Opted out: 10% of everything and 5% of the demo's category; in their quiet hours
    # (dropped) 20%; muted 5%; capped 5%.
    assert summary["held_back"] == {
        "opted_out": 300,
        "quiet_hours": 400,
        "muted": 100,
        "capped": 100,
    }
    assert summary["delivered"] == summary["expected"] == 1100
    assert (summary["failed"], summary["duplicates"], summary["ok"]) == (0, 0, True)


def test_demo_against_a_configured_database(database_url: str) -> None:
    summary = run_demo({"FANOUT_DATABASE_URL": database_url}, 2000)
    assert summary["database"] == "configured"
    assert summary["delivered"] == summary["devices"] == 2000
    assert 0 < summary["fanout_seconds"] <= summary["seconds"]  # the fan-out is part of it


@pytest.mark.parametrize("devices_per_user", [2])
def test_demo_with_several_devices_per_user(database_url: str, devices_per_user: int) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanout",
            "demo",
            "--subscribers",
            "500",
            "--devices-per-user",
            str(devices_per_user),
            "--json",
        ],
        env={**clean, "FANOUT_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and summary["delivered"] == 1000


async def test_migrations_are_rerunnable(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        assert await migrate(conn) == []  # the session fixture applied them already
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert applied == len(available_migrations())
    finally:
        await conn.close()


def test_demo_through_the_apns_fcm_and_web_push_emulators(database_url: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    result = subprocess.run(
        [sys.executable, "-m", "fanout", "demo", "--provider", "mixed",
         "--subscribers", "900", "--json"],
        env={**clean, "FANOUT_DATABASE_URL": database_url},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["provider"] == "mixed"
    assert summary["delivered"] == summary["devices"] == 900
    assert summary["duplicates"] == 0


def test_demo_of_three_apps_signs_every_push_with_its_own_apps_credential(
    database_url: str,
) -> None:
    summary = run_demo(
        {"FANOUT_DATABASE_URL": database_url, "FANOUT_SECRET_KEY": generate_key()},
        300,
        options=("--apps", "3"),
        says=(
            "starting the local APNs, FCM and Web Push emulators (HTTP/2, TLS) …",
            "seeding 3 apps, each with its own APNs key, FCM project and VAPID key, "
            "and 300 subscribers …",
        ),
    )
    assert summary["provider"] == "mixed"  # --apps implies the emulators
    assert summary["delivered"] == summary["devices"] == 900
    apps = summary["apps"]
    assert (
        len({app["apns_key_id"] for app in apps}) == len({app["fcm_project"] for app in apps}) == 3
    )
    for app in apps:
        assert (app["devices"], app["delivered"], app["foreign"], app["duplicates"]) == (
            300, 300, 0, 0,
        )  # fmt: skip
        assert app["ok"]


def test_demo_apps_is_refused_with_preferences_naming_the_option() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    result = subprocess.run(
        [sys.executable, "-m", "fanout", "demo", "--apps", "2", "--preferences"],
        env=clean, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--apps" in result.stderr and "--preferences" in result.stderr


def test_demo_apps_on_a_configured_database_needs_the_secret_key(database_url: str) -> None:
    """The apps' credentials stay sealed there: under a key made for the run, every later
    worker would refuse to start for want of it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    result = subprocess.run(
        [sys.executable, "-m", "fanout", "demo", "--apps", "2"],
        env={**clean, "FANOUT_DATABASE_URL": database_url},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "FANOUT_SECRET_KEY" in " ".join(result.stderr.split())
