"""The console in this process: the real app (its lifespan run), httpx over ASGI, its own
database and queues, and API keys of each scope."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser

import httpx
import pytest
from fastapi import FastAPI

from fanout.api import create_app
from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.store import connect

SCOPES = {
    "read": ["read"],
    "manage": ["read", "manage"],
    "publisher": ["read", "publish"],
    "publish_only": ["publish"],
    "all": ["read", "publish", "manage"],
}


@dataclass
class Console:
    app: FastAPI
    keys: dict[str, str]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://console.test"
        )

    @contextlib.asynccontextmanager
    async def signed_in(self, key: str) -> AsyncIterator[httpx.AsyncClient]:
        async with self.client() as client:
            page = await client.get("/console/login")
            response = await client.post(
                "/console/login",
                data={"api_key": self.keys[key], "csrf_token": form_token(page.text)},
            )
            assert response.status_code == 303, response.text
            yield client


def form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "a form with a CSRF token"
    return found.group(1)


@pytest.fixture
async def console(settings: Settings) -> AsyncIterator[Console]:
    async with open_client(settings) as client:
        await create_queues(client, settings)
    conn = await connect(settings.database_dsn())
    try:
        keys = {
            name: (await create_api_key(conn, scopes, name))[1] for name, scopes in SCOPES.items()
        }
    finally:
        await conn.close()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield Console(app, keys)


class PageParts(HTMLParser):
    """What a page holds that the CSP would refuse: inline scripts, handlers, styles."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.external_scripts: list[str] = []
        self.handlers: list[str] = []
        self.styles = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.styles += ("style" in named) + (tag == "style")
        if tag == "script":
            self._in_script = True
            if named.get("src"):
                self.external_scripts.append(named["src"] or "")
            else:
                self.inline_scripts += 1
        for name in ("href", "src", "action"):
            if (named.get(name) or "").lower().startswith("javascript:"):
                self.handlers.append(name)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


def page_parts(html: str) -> PageParts:
    parts = PageParts()
    parts.feed(html)
    return parts
