"""Web Push rendering: the JSON the service worker reads and the request's headers
(pure; the wire, decrypted, is tested against the emulator in tests/providers)."""

from __future__ import annotations

import os
from typing import Any

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fanout.notification import Notification, render
from fanout.providers.webpush import (
    ENCRYPTION_OVERHEAD,
    encrypt,
    webpush_headers,
    webpush_payload,
)


def rendered(**fields: Any) -> Any:
    return render(Notification.model_validate(fields), None, collapse_key="42")


def test_an_alert_keeps_fanouts_names_and_gives_tag_and_actions_as_the_notification_api() -> None:
    note = rendered(
        title="T", subtitle="S", body="B", url="https://x.example", thread_id="th",
        actions=[{"id": "open", "title": "Open", "url": "https://x.example/o"}],
        interruption_level="passive", action_category="C",  # Apple's alone
    )  # fmt: skip
    assert webpush_payload(note) == {
        "kind": "alert",
        "title": "T",
        "body": "B",
        "subtitle": "S",
        "url": "https://x.example",
        "tag": "th",
        "actions": [{"action": "open", "title": "Open", "navigate": "https://x.example/o"}],
        "data": {},
        "ttl": 86400,
        "priority": "high",
        "collapse_key": "42",
    }


def test_a_background_push_is_its_data_for_the_service_worker() -> None:
    assert webpush_payload(rendered(kind="background", data={"a": "1"}, priority="normal")) == {
        "kind": "background",
        "data": {"a": "1"},
        "ttl": 86400,
        "priority": "normal",
        "collapse_key": "42",
    }


def test_the_webpush_block_is_merged_into_the_payload_and_headers() -> None:
    note = rendered(
        title="T",
        webpush={"headers": {"Topic": "mine", "TTL": "5"}, "payload": {"title": "U", "ttl": None}},
    )
    assert webpush_payload(note)["title"] == "U" and "ttl" not in webpush_payload(note)
    assert webpush_headers(note) == {
        "TTL": "5",
        "Urgency": "high",
        "Topic": "mine",
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
    }


def test_encryption_adds_exactly_the_overhead_the_size_limit_allows_for() -> None:
    subscriber = ec.generate_private_key(ec.SECP256R1())
    public = subscriber.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    auth = os.urandom(16)
    for size in (0, 1, 3993):
        plaintext = b"x" * size
        body = encrypt(plaintext, public, auth)
        assert len(body) == size + ENCRYPTION_OVERHEAD
        assert (
            http_ece.decrypt(body, private_key=subscriber, auth_secret=auth, version="aes128gcm")
            == plaintext
        )
