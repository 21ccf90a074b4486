"""The push sink's addressed check: a push whose data names its device, sent elsewhere."""

from __future__ import annotations

import httpx

from fanout.local.sink import ADDRESSED_TO, PushSink


async def test_a_push_sent_to_another_device_than_it_names_is_counted_wrong() -> None:
    sink = PushSink()
    transport = httpx.ASGITransport(app=sink)
    async with httpx.AsyncClient(transport=transport, base_url="http://sink") as client:
        for device, named in ((1, "1"), (2, "2"), (3, "7")):
            push = {
                "collapse_key": str(10 + device),
                "payload": {"title": "x", "data": {ADDRESSED_TO: named}},
                "devices": [[device, f"token{device}"]],
            }
            assert (await client.post("/push", json=push)).json() == {"results": ["ok"]}
        unnamed = {"collapse_key": "9", "payload": {"title": "x"}, "devices": [[4, "t"]]}
        await client.post("/push", json=unnamed)
        stats = (await client.get("/stats")).json()
    assert stats["addressed"] == {"checked": 3, "wrong": 1}
    assert stats["unique"] == 4
