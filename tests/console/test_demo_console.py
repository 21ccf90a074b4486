"""`fanout demo --console`: the demo's event, then the console kept running with a key."""

from __future__ import annotations

import os
import re
import signal

import httpx

from tests.console.conftest import form_token
from tests.processes import start_serving


def test_demo_keeps_the_console_running_with_a_key_to_sign_in(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "demo.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    process, url = start_serving(
        ["demo", "--subscribers", "300", "--console"], log, clean, timeout=240
    )
    try:
        said = log.read_text()
        assert f"console: {url}/console" in said
        key = re.search(r"shown once\): (fo_\S+)", said)
        assert key, said
        with httpx.Client(base_url=url, timeout=30) as client:
            token = form_token(client.get("/console/login").text)
            signed_in = client.post(
                "/console/login", data={"api_key": key.group(1), "csrf_token": token}
            )
            assert signed_in.status_code == 303
            events = client.get("/console")
            assert 'data-status="delivered"' in events.text
            assert client.get("/console/queues").status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
