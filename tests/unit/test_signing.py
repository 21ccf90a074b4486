"""Standard Webhooks signatures, checked by the specification's own Python library."""

from __future__ import annotations

import time

import pytest
import standardwebhooks

from fanout.webhooks import signing


def test_a_signed_message_verifies_with_the_standard_webhooks_library() -> None:
    secret = signing.new_secret()
    body = b'{"type":"event.finished","data":{"sent":3}}'
    headers = signing.headers(
        signing.secret_key(secret), webhook_id="msg_1", timestamp=int(time.time()), body=body
    )
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {
        "type": "event.finished",
        "data": {"sent": 3},
    }


def test_an_altered_body_or_another_secret_does_not_verify() -> None:
    secret = signing.new_secret()
    body = b'{"a":1}'
    headers = signing.headers(
        signing.secret_key(secret), webhook_id="msg_2", timestamp=int(time.time()), body=body
    )
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(signing.new_secret()).verify(body, headers)


def test_the_signature_is_the_specifications_example() -> None:
    # The example of the specification (standard-webhooks/spec, "Signature scheme").
    key = signing.secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signed = signing.signature(
        key,
        webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
        body=b'{"test": 2432232314}',
    )
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_secret_is_whsec_and_32_random_bytes() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(signing.secret_key(secret)) == 32
    assert secret != signing.new_secret()
    with pytest.raises(ValueError, match="whsec_"):
        signing.secret_key("not-a-secret")
