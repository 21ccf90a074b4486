"""`fanout serve` as a real process on loopback, with its own queues and API keys."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.store import connect
from tests.processes import start_serving, stop


@dataclass
class ApiServer:
    url: str
    settings: Settings
    keys: dict[str, str]  # scope name ("publish", "manage", "read", "all", …) -> token
    log: Path

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = self.headers(key) if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


def start_server(
    settings: Settings, log: Path, *, open_files: int | None = None, **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`fanout serve` on the settings' database and queues; ``env`` overrides;
    ``open_files``: the process's limit of file descriptors."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
        "FANOUT_DATABASE_URL": settings.database_dsn(),
        "FANOUT_SQS_ENDPOINT_URL": settings.sqs_endpoint_url or "",
        "FANOUT_QUEUE_PREFIX": settings.queue_prefix,
        "FANOUT_API_PUBLISH_RATE": "10",
        "FANOUT_API_PUBLISH_BURST": "40",
        "FANOUT_API_MAX_BODY_BYTES": str(2 * 1024 * 1024),
        # An event whose enqueue failed is sent by the reconciler 2 s on (not 60).
        "FANOUT_RECONCILE_AFTER_SECONDS": str(settings.reconcile_after_seconds),
        **env,
    }
    return start_serving(["serve"], log, environment, open_files=open_files)


@pytest.fixture(scope="session")
def api(
    session_database_url: str, sqs_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    settings = Settings(
        database_url=SecretStr(session_database_url),
        sqs_endpoint_url=sqs_endpoint,
        queue_prefix=f"api{secrets.token_hex(4)}",
        fanout_queue_url=None,
        delivery_queue_url=None,
        visibility_timeout=5,
        poll_wait_seconds=1,
        retry_base_delay=0,
        reconcile_interval_seconds=0.5,
        reconcile_after_seconds=2,
    )

    async def prepare() -> dict[str, str]:
        async with open_client(settings) as client:
            await create_queues(client, settings)
        conn = await connect(session_database_url)
        try:
            wanted = {
                "publish": ["publish"],
                "manage": ["manage"],
                "read": ["read"],
                "all": ["publish", "manage", "read"],
                "fuzz": ["publish", "manage", "read"],
                "limited": ["publish"],
                "revoked": ["read"],
            }
            return {
                name: (await create_api_key(conn, scopes, name))[1]
                for name, scopes in wanted.items()
            }
        finally:
            await conn.close()

    keys = asyncio.run(prepare())
    log = tmp_path_factory.mktemp("api") / "server.log"
    # A key to seal webhook secrets under (POST /v1/webhooks needs one).
    process, url = start_server(settings, log, FANOUT_SECRET_KEY=generate_key())
    try:
        yield ApiServer(url, settings, keys, log)
    finally:
        stop(process)
