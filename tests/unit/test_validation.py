"""Push credentials are checked when given: each refusal names the field at fault and
never repeats its value; what is kept to show identifies the key and holds nothing secret."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from fanout.config import ConfigError, Settings
from fanout.credentials.validation import (
    InvalidCredential,
    apns_credential,
    application_server_key,
    fcm_credential,
    generate_vapid_key,
    load_vapid_private_key,
    settings_credentials,
    webpush_credential,
)
from fanout.providers.webpush import b64url, b64url_decode


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# The middle of a PEM body: what a leak would show.
P256_BODY = pem(P256).splitlines()[2]
RSA_BODY = pem(RSA).splitlines()[5]

APNS = {"key_pem": pem(P256), "key_id": "ABC123DEFG", "team_id": "TEAM123456",
        "bundle_id": "com.example.books"}  # fmt: skip
SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "books-prod",
    "private_key_id": "0123abcd",
    "private_key": pem(RSA),
    "client_email": "push@books-prod.iam.gserviceaccount.com",
    "token_uri": "https://oauth2.googleapis.com/token",
}


def refused(make: Any, **fields: Any) -> InvalidCredential:
    with pytest.raises(InvalidCredential) as caught:
        make(**fields)
    shown = str(caught.value)
    for value in fields.values():  # nothing given is echoed (the short ids aside)
        assert len(str(value)) < 12 or str(value) not in shown
    assert P256_BODY not in shown and RSA_BODY not in shown
    return caught.value


def test_an_apns_credential_keeps_the_key_to_seal_and_shows_only_what_identifies_it() -> None:
    credential = apns_credential(**APNS)
    assert credential.provider == "apns"
    assert serialization.load_pem_private_key(credential.secret, None).private_numbers() == (
        P256.private_numbers()
    )
    assert credential.identity == {
        "key_id": "ABC123DEFG",
        "team_id": "TEAM123456",
        "bundle_id": "com.example.books",
        "fingerprint": credential.identity["fingerprint"],
    }
    assert len(credential.identity["fingerprint"]) == 16
    assert P256_BODY not in repr(credential) and P256_BODY not in str(credential.identity)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("key_pem", "not a key", "is not a PEM private key"),
        ("key_pem", pem(P384), "EC P-256"),  # ES256 is P-256 only
        ("key_pem", pem(RSA), "EC P-256"),
        ("key_id", "ABC123", "10-character key id"),
        ("key_id", "abc123defg", "10-character key id"),
        ("team_id", "TEAM-12345", "10-character team id"),
        ("bundle_id", "books", "bundle id"),
        ("bundle_id", "com.example/books", "bundle id"),
        ("bundle_id", "com." + "a" * 160, "bundle id"),
    ],
)
def test_an_apns_credential_is_refused_naming_its_field(
    field: str, value: str, problem: str
) -> None:
    error = refused(apns_credential, **{**APNS, field: value})
    assert error.field == ("key" if field == "key_pem" else field)
    assert problem in error.problem


def test_an_fcm_credential_shows_the_project_and_account_not_the_key() -> None:
    credential = fcm_credential(service_account_json=orjson.dumps(SERVICE_ACCOUNT).decode())
    assert orjson.loads(credential.secret) == SERVICE_ACCOUNT
    assert credential.identity["project_id"] == "books-prod"
    assert credential.identity["client_email"] == SERVICE_ACCOUNT["client_email"]
    assert credential.identity["private_key_id"] == "0123abcd"
    assert RSA_BODY not in str(credential.identity) and RSA_BODY not in repr(credential)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (None, "is not JSON"),
        ([1, 2], "is not a JSON object"),
        ({"type": "authorized_user"}, '"type": "service_account"'),
        ({"project_id": None}, 'has no "project_id"'),
        ({"project_id": "Books Prod/../x"}, '"project_id" that is not a Google Cloud project id'),
        ({"client_email": ""}, 'has no "client_email"'),
        ({"client_email": "nobody"}, '"client_email" that is not an email address'),
        ({"token_uri": None}, 'has no "token_uri"'),
        ({"token_uri": "http://oauth2.example/token"}, '"token_uri" that is not an https:// URL'),
        ({"private_key": None}, 'has no "private_key"'),
        ({"private_key": pem(RSA)[:200]}, '"private_key" that is not an RSA private key'),
        ({"private_key": pem(P256)}, '"private_key" that is not an RSA private key'),
    ],
)
def test_an_fcm_credential_is_refused_naming_the_json_field(change: Any, problem: str) -> None:
    if change is None:
        text = "{" + orjson.dumps(SERVICE_ACCOUNT).decode()
    elif isinstance(change, list):
        text = orjson.dumps(change).decode()
    else:
        text = orjson.dumps({**SERVICE_ACCOUNT, **change}).decode()
    error = refused(fcm_credential, service_account_json=text)
    assert error.field == "service_account"
    assert problem in error.problem


def test_a_webpush_credential_shows_the_browsers_application_server_key() -> None:
    credential = webpush_credential(vapid_private_key=pem(P256), subject="mailto:push@example.com")
    public = credential.identity["public_key"]
    point = b64url_decode(public)
    assert len(point) == 65 and point[0] == 4  # uncompressed P-256 point
    assert "=" not in public and "+" not in public and "/" not in public  # base64url, unpadded
    assert ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).public_numbers() == (
        P256.public_key().public_numbers()
    )
    assert credential.identity["subject"] == "mailto:push@example.com"
    assert P256_BODY not in str(credential.identity)


def test_a_vapid_key_may_be_the_raw_scalar_web_push_tools_print() -> None:
    scalar = b64url(P256.private_numbers().private_value.to_bytes(32, "big"))
    credential = webpush_credential(vapid_private_key=scalar, subject="https://example.com/push")
    assert credential.identity["public_key"] == application_server_key(P256)
    assert scalar not in credential.secret.decode()  # stored as PEM, shown nowhere


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"vapid_private_key": "not a key"}, "vapid_private_key", "is not a P-256 private key"),
        ({"vapid_private_key": pem(P384)}, "vapid_private_key", "is not a P-256 private key"),
        ({"vapid_private_key": pem(RSA)}, "vapid_private_key", "is not a P-256 private key"),
        ({"vapid_private_key": b64url(b"\x01" * 31)}, "vapid_private_key", "P-256"),
        ({"subject": "push@example.com"}, "subject", "mailto: address or an https:// URL"),
        ({"subject": "http://example.com"}, "subject", "mailto: address or an https:// URL"),
    ],
)
def test_a_webpush_credential_is_refused_naming_its_field(
    fields: dict[str, str], field: str, problem: str
) -> None:
    given = {"vapid_private_key": pem(P256), "subject": "mailto:push@example.com", **fields}
    error = refused(webpush_credential, **given)
    assert (error.field, problem in error.problem) == (field, True)


def test_a_generated_vapid_key_is_a_p256_pair() -> None:
    key = load_vapid_private_key(generate_vapid_key())
    assert isinstance(key.curve, ec.SECP256R1)
    assert generate_vapid_key() != generate_vapid_key()


def test_the_settings_credentials_are_checked_as_stored_ones_naming_the_variable() -> None:
    settings = Settings(
        apns_key=SecretStr(APNS["key_pem"]), apns_key_id="ABC123DEFG",
        apns_team_id="TEAM123456", apns_topic="com.example.books",
        fcm_credentials=SecretStr(orjson.dumps(SERVICE_ACCOUNT).decode()),
        vapid_private_key=SecretStr(pem(P256)), vapid_subject="mailto:push@example.com",
    )  # fmt: skip
    found = settings_credentials(settings)
    assert sorted(found) == ["apns", "fcm", "webpush"]
    assert found["apns"].identity["bundle_id"] == "com.example.books"
    assert settings_credentials(Settings()) == {}

    wrong = settings.model_copy(update={"apns_key_id": "K"})
    with pytest.raises(ConfigError, match=r"^FANOUT_APNS_KEY_ID must be the 10-character"):
        settings_credentials(wrong)
    partial = Settings(vapid_private_key=SecretStr(pem(P256)))
    with pytest.raises(ConfigError, match="set FANOUT_VAPID_SUBJECT too"):
        settings_credentials(partial)
    no_project = settings.model_copy(
        update={
            "fcm_credentials": SecretStr(
                orjson.dumps({**SERVICE_ACCOUNT, "project_id": ""}).decode()
            )
        }
    )
    with pytest.raises(
        ConfigError, match=r'^FANOUT_FCM_CREDENTIALS \(or _FILE\) has no "project_id"'
    ):
        settings_credentials(no_project)
