"""POST /v1/imports/{kind} over HTTP: a streamed NDJSON body, counts and rejects by line,
the same body twice changes nothing, 422 naming a bad parameter."""

from __future__ import annotations

import gzip
import secrets
from collections.abc import AsyncIterator

import orjson

from tests.api.conftest import ApiServer


def ndjson(*records: object) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


async def _in_pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_an_ndjson_import_lands_good_lines_and_answers_bad_ones_by_number(
    api: ApiServer,
) -> None:
    run = secrets.token_hex(4)
    users = [f"imp-{run}-{n}" for n in range(300)]
    devices = [{"user_id": u, "platform": "fcm", "token": f"tok-{u}"} for u in users]
    devices[9] = {"user_id": users[9], "platform": "apns", "token": "not-hex"}  # line 10
    devices.append({"user_id": f"stranger-{run}", "platform": "fcm", "token": f"x-{run}"})
    async with api.client("all") as client:
        made = await client.post(
            "/v1/imports/users", content=ndjson(*({"user_id": u} for u in users))
        )
        assert made.status_code == 200, made.text
        assert (made.json()["inserted"], made.json()["rejected"]) == (300, 0)

        # Streamed in small pieces (a chunked body), gzipped.
        body = gzip.compress(ndjson(*devices))
        answer = await client.post(
            "/v1/imports/devices",
            content=_in_pieces(body, 777),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"},
        )
        assert answer.status_code == 200, answer.text
        counts = answer.json()
        assert (counts["rows"], counts["inserted"], counts["rejected"]) == (301, 299, 2)
        assert [r["line"] for r in counts["rejects"]] == [10, 301]
        assert counts["rejects"][0]["reason"].startswith("token: String should match pattern")
        assert counts["rejects"][1]["reason"].startswith("user_id: no such user")

        again = await client.post("/v1/imports/devices", content=ndjson(*devices))
        assert (again.json()["inserted"], again.json()["updated"], again.json()["unchanged"]) == (
            0,
            0,
            299,
        )

        dry = await client.post(
            "/v1/imports/subscriptions",
            params={"dry_run": "true"},
            content=ndjson({"topic": f"imp-{run}", "user_id": users[0]}),
        )
        assert dry.json()["inserted"] == 1 and dry.json()["dry_run"] is True
        listed = await client.get(f"/v1/users/{users[0]}/subscriptions")
        assert listed.json()["items"] == []


async def test_a_bad_kind_or_mapping_is_422_naming_it_and_read_keys_are_refused(
    api: ApiServer,
) -> None:
    async with api.client("manage") as client:
        kind = await client.post("/v1/imports/pigeons", content=b"{}\n")
        assert kind.status_code == 422 and kind.json()["detail"][0]["loc"] == ["path", "kind"]
        mapping = await client.post("/v1/imports/users", params={"mapping": "braze"}, content=b"")
        assert mapping.status_code == 422
        assert mapping.json()["detail"][0]["loc"] == ["query", "mapping"]
    async with api.client("read") as client:
        assert (await client.post("/v1/imports/users", content=b"")).status_code == 403


def test_the_import_route_is_in_the_openapi_document_with_its_ndjson_body(api: ApiServer) -> None:
    import httpx

    document = httpx.get(f"{api.url}/openapi.json").json()
    operation = document["paths"]["/v1/imports/{kind}"]["post"]
    assert "application/x-ndjson" in operation["requestBody"]["content"]
    assert "ImportOut" in str(operation["responses"]["200"])
