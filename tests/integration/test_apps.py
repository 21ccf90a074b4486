"""`fanout apps` and `fanout secrets` as an operator runs them, against a real PostgreSQL:
apps and their credentials are stored, shown by what identifies them, sealed at rest (no
private key in any output or in the table's bytes), resealed by a rotation, and a worker or
API server without the key that opens them does not start."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fanout.config import Settings
from fanout.credentials import stored
from fanout.credentials.sealing import Keyring, decode_key, generate_key, kek_id
from fanout.local.postgres_server import free_port
from fanout.store import apps
from fanout.store import connect as store_connect


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def der(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Keys:
    """One app's private keys in every form they could leak in, and the files holding them."""

    apns: ec.EllipticCurvePrivateKey
    fcm: rsa.RSAPrivateKey
    vapid: ec.EllipticCurvePrivateKey
    apns_file: Path
    fcm_file: Path
    vapid_file: Path

    def leaks(self) -> list[bytes]:
        """What must never be seen: each PEM body line, and each key's DER bytes."""
        found = [b"PRIVATE KEY"]
        for key in (self.apns, self.fcm, self.vapid):
            found += [line.encode() for line in pem(key).splitlines()[1:-1] if len(line) > 20]
            found.append(der(key))
        return found


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    apns_key = ec.generate_private_key(ec.SECP256R1())
    fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vapid_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "AuthKey.p8").write_text(pem(apns_key))
    account = {
        "type": "service_account",
        "project_id": "books-prod",
        "private_key_id": "1a2b3c4d",
        "private_key": pem(fcm_key),
        "client_email": "push@books-prod.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    (tmp_path / "service-account.json").write_bytes(orjson.dumps(account))
    (tmp_path / "vapid.pem").write_text(pem(vapid_key))
    return Keys(
        apns_key, fcm_key, vapid_key,
        tmp_path / "AuthKey.p8", tmp_path / "service-account.json", tmp_path / "vapid.pem",
    )  # fmt: skip


class Operator:
    """Runs `fanout` as a process against the test's database, keeping every output."""

    def __init__(self, database_url: str, secret_key: str | None) -> None:
        self.database_url = database_url
        self.secret_key = secret_key
        self.outputs: list[str] = []

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FANOUT_", "AWS_"))},
            "FANOUT_DATABASE_URL": self.database_url,
            **({"FANOUT_SECRET_KEY": self.secret_key} if self.secret_key else {}),
            **env,
        }
        result = subprocess.run(
            [sys.executable, "-m", "fanout", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.outputs += [result.stdout, result.stderr]
        return result

    def ok(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        result = self(*args, **env)
        assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def secret_key() -> str:
    return generate_key()


@pytest.fixture
def fanout(database_url: str, secret_key: str) -> Operator:
    return Operator(database_url, secret_key)


def one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    return line


def set_all_credentials(fanout: Operator, keys: Keys, app: str) -> str:
    """Store the app's three credentials; the Web Push public key it printed."""
    fanout.ok("apps", "credentials", "set", app, "apns", "--key-file", str(keys.apns_file),
              "--key-id", "ABC123DEFG", "--team-id", "TEAM123456",
              "--bundle-id", "com.example.books")  # fmt: skip
    fanout.ok("apps", "credentials", "set", app, "fcm", "--service-account", str(keys.fcm_file))
    webpush = fanout.ok("apps", "credentials", "set", app, "webpush",
                        "--vapid-private-key-file", str(keys.vapid_file),
                        "--subject", "mailto:push@example.com")  # fmt: skip
    return webpush.stdout.strip()


async def table_bytes(database_url: str) -> bytes:
    """app_credentials as PostgreSQL keeps it: its rows as text, and its heap and TOAST
    files on disk after a checkpoint (readable by the superuser the tests connect as)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT t::text AS row, t.sealed FROM app_credentials AS t")
        seen = b"".join(r["row"].encode() + r["sealed"] for r in rows)
        await conn.execute("CHECKPOINT")
        for relation in await conn.fetch(
            """SELECT c.oid::regclass AS main, c.reltoastrelid::regclass AS toast
               FROM pg_class AS c WHERE c.relname = 'app_credentials'"""
        ):
            for name in (relation["main"], relation["toast"]):
                path = await conn.fetchval("SELECT pg_relation_filepath($1::regclass)", name)
                seen += await conn.fetchval("SELECT pg_read_binary_file($1)", path)
        return seen
    finally:
        await conn.close()


async def sealed_rows(database_url: str) -> list[apps.SealedCredential]:
    conn = await store_connect(database_url)
    try:
        refs = await apps.credential_refs(conn)
        found = [
            await apps.sealed_credential(conn, app_id=r.app_id, provider=r.provider) for r in refs
        ]
        return [row for row in found if row is not None]
    finally:
        await conn.close()


def test_apps_are_created_listed_shown_and_deleted(fanout: Operator) -> None:
    listed = fanout.ok("apps", "list")
    assert [line.split() for line in listed.stdout.splitlines()] == [["default", "-", "default"]]

    created = fanout("apps", "create", "books-ios", "--name", "Books for iOS")
    assert created.returncode == 0 and "created app books-ios" in created.stderr
    taken = fanout("apps", "create", "books-ios")
    assert one_line(taken, 1) == "fanout: an app books-ios exists already"
    bad = fanout("apps", "create", "Books_iOS")
    assert bad.returncode == 2 and "KEY" in bad.stderr and "Traceback" not in bad.stderr

    rows = orjson.loads(fanout.ok("apps", "list", "--json").stdout)
    assert [(r["key"], r["name"], r["providers"]) for r in rows] == [
        ("books-ios", "Books for iOS", []),
        ("default", "default", []),
    ]
    shown = orjson.loads(fanout.ok("apps", "show", "books-ios", "--json").stdout)
    assert (shown["key"], shown["settings"], shown["credentials"]) == ("books-ios", {}, {})
    assert "no credentials" in fanout.ok("apps", "show", "books-ios").stdout
    assert one_line(fanout("apps", "show", "nope"), 1).startswith("fanout: no app nope")

    refused = fanout("apps", "delete", "default")
    assert one_line(refused, 1).startswith("fanout: the app default cannot be deleted")
    assert fanout.ok("apps", "delete", "books-ios").returncode == 0
    assert one_line(fanout("apps", "delete", "books-ios"), 1) == "fanout: no app books-ios"


def test_credentials_are_shown_by_what_identifies_them_and_never_in_clear(
    fanout: Operator, keys: Keys, database_url: str, secret_key: str
) -> None:
    fanout.ok("apps", "create", "books")
    application_server_key = set_all_credentials(fanout, keys, "books")

    shown = orjson.loads(fanout.ok("apps", "show", "books", "--json").stdout)
    credentials = shown["credentials"]
    assert sorted(credentials) == ["apns", "fcm", "webpush"]
    assert {k: credentials["apns"][k] for k in ("key_id", "team_id", "bundle_id")} == {
        "key_id": "ABC123DEFG",
        "team_id": "TEAM123456",
        "bundle_id": "com.example.books",
    }
    assert credentials["fcm"]["project_id"] == "books-prod"
    assert credentials["fcm"]["client_email"] == "push@books-prod.iam.gserviceaccount.com"
    assert credentials["webpush"]["public_key"] == application_server_key
    assert all(c["kek_id"] == kek_id(decode_key(secret_key)) for c in credentials.values())
    assert all(len(c["fingerprint"]) == 16 for c in credentials.values())
    readable = fanout.ok("apps", "show", "books").stdout
    assert "key id ABC123DEFG" in readable and "project id books-prod" in readable
    listed = fanout.ok("apps", "list").stdout
    assert "books  " in listed and "apns,fcm,webpush" in listed

    # Replacing says so; removing removes.
    replaced = fanout.ok("apps", "credentials", "set", "books", "fcm",
                         "--service-account", str(keys.fcm_file))  # fmt: skip
    assert "replaced the fcm credential of books: project id books-prod" in replaced.stderr

    # Nothing of any private key in any output, nor in the table's bytes on disk.
    outputs = "\n".join(fanout.outputs).encode()
    at_rest = asyncio.run(table_bytes(database_url))
    for leak in keys.leaks():
        assert leak not in outputs
        assert leak not in at_rest
    assert secret_key.encode() not in outputs and decode_key(secret_key) not in at_rest

    # What is sealed opens, for this app only, to the key that was given.
    async def opened() -> bytes | None:
        conn = await store_connect(database_url)
        try:
            app = await apps.app_by_key(conn, key="books")
            assert app is not None
            return await stored.open_credential(
                conn, app_id=app.id, provider="apns", keyring=Keyring.from_base64(secret_key)
            )
        finally:
            await conn.close()

    opened_pem = asyncio.run(opened())
    assert opened_pem is not None
    assert serialization.load_pem_private_key(opened_pem, None).private_numbers() == (
        keys.apns.private_numbers()
    )

    fanout.ok("apps", "credentials", "remove", "books", "apns")
    gone = fanout("apps", "credentials", "remove", "books", "apns")
    assert one_line(gone, 1) == "fanout: the app books has no apns credential"
    assert (
        "apns"
        not in orjson.loads(fanout.ok("apps", "show", "books", "--json").stdout)["credentials"]
    )
    # An app deleted takes its credentials with it.
    fanout.ok("apps", "delete", "books")
    assert asyncio.run(sealed_rows(database_url)) == []


@pytest.mark.parametrize(
    ("args", "option", "problem"),
    [
        (["apns", "--key-file", "{apns}", "--key-id", "abc", "--team-id", "TEAM123456",
          "--bundle-id", "com.example.books"], "--key-id", "10-character key id"),
        (["apns", "--key-file", "{fcm}", "--key-id", "ABC123DEFG", "--team-id", "TEAM123456",
          "--bundle-id", "com.example.books"], "--key-file", "is not a PEM private key"),
        (["apns", "--key-file", "{apns}", "--key-id", "ABC123DEFG", "--team-id", "TEAM123456",
          "--bundle-id", "books"], "--bundle-id", "bundle id"),
        (["apns", "--key-file", "{apns}", "--key-id", "ABC123DEFG",
          "--bundle-id", "com.example.books"], "--team-id", "is needed for apns"),
        (["fcm", "--service-account", "{apns}"], "--service-account", "is not JSON"),
        (["fcm", "--service-account", "/nonexistent/sa.json"], "--service-account", "cannot read"),
        (["fcm", "--service-account", "{fcm}", "--subject", "mailto:a@b.c"], "--subject",
         "is not for fcm"),
        (["webpush", "--vapid-private-key-file", "{fcm}", "--subject", "mailto:a@b.c"],
         "--vapid-private-key-file", "is not a P-256 private key"),
        (["webpush", "--vapid-private-key-file", "{vapid}", "--subject", "a@b.c"], "--subject",
         "mailto: address or an https:// URL"),
        (["hms"], "PROVIDER", "must be apns, fcm or webpush"),
    ],
)  # fmt: skip
def test_a_wrong_credential_is_refused_naming_its_option(
    fanout: Operator, keys: Keys, database_url: str, args: list[str], option: str, problem: str
) -> None:
    files = {"apns": keys.apns_file, "fcm": keys.fcm_file, "vapid": keys.vapid_file}
    args = [arg.format(**files) for arg in args]
    result = fanout("apps", "credentials", "set", "default", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    shown = " ".join(result.stderr.split())  # rich may wrap the message in its box
    assert option in shown and problem in shown
    for leak in keys.leaks():
        assert leak.decode(errors="ignore") not in result.stderr
    assert asyncio.run(sealed_rows(database_url)) == []


def test_setting_a_credential_without_the_secret_key_names_it(
    database_url: str, keys: Keys
) -> None:
    fanout = Operator(database_url, secret_key=None)
    result = fanout("apps", "credentials", "set", "default", "fcm",
                    "--service-account", str(keys.fcm_file))  # fmt: skip
    assert one_line(result, 2).startswith("fanout: FANOUT_SECRET_KEY is not set")
    wrong = fanout("apps", "list", FANOUT_SECRET_KEY="c2hvcnQ=")
    assert one_line(wrong, 2) == (
        "fanout: FANOUT_SECRET_KEY is invalid: Value error, must be 32 bytes in base64 "
        "(`fanout secrets generate-key` makes one)"
    )


def test_rotate_reseals_every_credential_under_the_new_key(
    fanout: Operator, keys: Keys, database_url: str, secret_key: str
) -> None:
    fanout.ok("apps", "create", "books")
    set_all_credentials(fanout, keys, "books")
    set_all_credentials(fanout, keys, "default")
    before = {(r.app_id, r.provider): r for r in asyncio.run(sealed_rows(database_url))}
    old = Keyring.from_base64(secret_key)
    plaintexts = {
        where: old.open(r.sealed, kek_id=r.kek_id, app_id=r.app_id, provider=r.provider)
        for where, r in before.items()
    }
    new_key = fanout.ok("secrets", "generate-key").stdout.strip()
    new = Keyring.from_base64(new_key)
    assert new.kek_id != old.kek_id

    # A rotation cut short: one row already resealed under the new key.
    async def reseal_one() -> None:
        app_id, provider = next(iter(before))
        conn = await store_connect(database_url)
        try:
            sealed = new.seal(plaintexts[(app_id, provider)], app_id=app_id, provider=provider)
            await apps.reseal_credential(
                conn, app_id=app_id, provider=provider, sealed=sealed.sealed, kek_id=sealed.kek_id
            )
        finally:
            await conn.close()

    asyncio.run(reseal_one())
    rotated = fanout.ok("secrets", "rotate", "--new-key", new_key)
    assert f"resealed 5 credential(s) under key {new.kek_id}; 1 were under it already" in (
        rotated.stderr
    )
    after = {(r.app_id, r.provider): r for r in asyncio.run(sealed_rows(database_url))}
    assert after.keys() == before.keys()
    for where, row in after.items():
        assert row.kek_id == new.kek_id and row.sealed != before[where].sealed
        opened = Keyring(decode_key(new_key)).open(
            row.sealed, kek_id=row.kek_id, app_id=row.app_id, provider=row.provider
        )
        assert opened == plaintexts[where]

    # Again (the new key given in the environment, off the command line): nothing to do.
    again = fanout.ok("secrets", "rotate", FANOUT_NEW_SECRET_KEY=new_key)
    assert "resealed 0 credential(s)" in again.stderr and "6 were under it already" in again.stderr
    # The old key no longer opens them: a worker given it does not start.
    worker = fanout("worker")
    assert one_line(worker, 2).startswith(
        f"fanout: FANOUT_SECRET_KEY (key {old.kek_id}) did not seal 6 of the stored app "
        f"credentials (sealed under key {new.kek_id})"
    )
    # A key that opens none of them is reported per credential, and the rotation fails.
    stranger = fanout("secrets", "rotate", "--new-key", generate_key(),
                      FANOUT_SECRET_KEY=generate_key())  # fmt: skip
    assert stranger.returncode == 1
    assert stranger.stderr.count(f"is sealed under key {new.kek_id}") == 6
    outputs = "\n".join(fanout.outputs)
    assert outputs.count(new_key) == 1  # printed once, by generate-key
    assert secret_key not in outputs


def test_a_worker_or_server_without_the_key_to_open_stored_credentials_does_not_start(
    fanout: Operator, keys: Keys, database_url: str, secret_key: str, tmp_path: Path
) -> None:
    no_aws = {
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    # With no credential stored, no key is needed: the worker goes on to its queues (and
    # here stops there, as no SQS is configured).
    without_key = Operator(database_url, secret_key=None)
    line = one_line(without_key("worker", **no_aws), 2)
    assert line.startswith("fanout: FANOUT_SQS_ENDPOINT_URL is not set")

    fanout.ok("apps", "credentials", "set", "default", "fcm", "--service-account",
              str(keys.fcm_file))  # fmt: skip
    expected = (
        "fanout: FANOUT_SECRET_KEY is not set, but 1 app credential(s) are stored sealed "
        f"under key {kek_id(decode_key(secret_key))}: set it to that key"
    )
    assert one_line(without_key("worker", **no_aws), 2) == expected
    # On a port of its own: serve checks its port first, and 8000 may be another's here.
    serve = without_key("serve", "--port", str(free_port()), **no_aws)
    assert one_line(serve, 2) == expected
    # With the key, the check passes and the worker goes on to its queues.
    with_key = fanout("worker", **no_aws)
    assert one_line(with_key, 2).startswith("fanout: FANOUT_SQS_ENDPOINT_URL is not set")


def test_import_env_stores_the_settings_as_the_apps_credentials(
    fanout: Operator, keys: Keys, database_url: str
) -> None:
    env = {
        "FANOUT_APNS_KEY_FILE": str(keys.apns_file),
        "FANOUT_APNS_KEY_ID": "ABC123DEFG",
        "FANOUT_APNS_TEAM_ID": "TEAM123456",
        "FANOUT_APNS_TOPIC": "com.example.books",
        "FANOUT_FCM_CREDENTIALS_FILE": str(keys.fcm_file),
        "FANOUT_VAPID_PRIVATE_KEY": pem(keys.vapid),
        "FANOUT_VAPID_SUBJECT": "mailto:push@example.com",
    }
    imported = fanout.ok("apps", "import-env", "default", **env)
    assert imported.stderr.splitlines() == ["apns: stored", "fcm: stored", "webpush: stored"]
    shown = orjson.loads(fanout.ok("apps", "show", "default", "--json").stdout)["credentials"]
    assert shown["apns"]["key_id"] == "ABC123DEFG" and shown["fcm"]["project_id"] == "books-prod"
    again = fanout.ok("apps", "import-env", "default", **env)
    assert "apns: kept (it had one; --replace replaces it)" in again.stderr
    replaced = fanout.ok("apps", "import-env", "default", "--replace", **env)
    assert "apns: replaced" in replaced.stderr

    wrong = fanout("apps", "import-env", "default", **{**env, "FANOUT_APNS_KEY_ID": "K"})
    assert one_line(wrong, 2).startswith("fanout: FANOUT_APNS_KEY_ID must be the 10-character")
    nothing = fanout("apps", "import-env", "default")
    assert one_line(nothing, 1).startswith("fanout: no FANOUT_APNS_*")
    outputs = "\n".join(fanout.outputs).encode()
    assert not [leak for leak in keys.leaks() if leak in outputs]
    at_rest = asyncio.run(table_bytes(database_url))
    assert not [leak for leak in keys.leaks() if leak in at_rest]


def test_vapid_generate_prints_the_browsers_key_and_never_the_private_one(
    fanout: Operator, database_url: str, tmp_path: Path
) -> None:
    fanout.ok("apps", "create", "books-web")
    generated = fanout.ok("apps", "vapid", "generate", "books-web",
                          "--subject", "mailto:push@example.com")  # fmt: skip
    public_key = generated.stdout.strip()
    shown = orjson.loads(fanout.ok("apps", "show", "books-web", "--json").stdout)
    assert shown["credentials"]["webpush"]["public_key"] == public_key
    assert len(public_key) == 87 and "=" not in public_key  # 65 bytes, base64url unpadded
    assert "PRIVATE" not in generated.stdout + generated.stderr

    # Replacing it would unsubscribe every browser: only when asked.
    again = fanout("apps", "vapid", "generate", "books-web", "--subject", "mailto:push@example.com")
    assert one_line(again, 1).startswith("fanout: the app books-web has a VAPID key already")
    replaced = fanout.ok("apps", "vapid", "generate", "books-web", "--replace",
                         "--subject", "mailto:push@example.com")  # fmt: skip
    assert replaced.stdout.strip() != public_key

    # Without an app: written to a new file only its owner reads, never over another.
    target = tmp_path / "vapid-private.pem"
    written = fanout.ok("apps", "vapid", "generate", "--private-key-file", str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "BEGIN PRIVATE KEY" in target.read_text()
    assert target.read_text() not in written.stdout
    refused = fanout("apps", "vapid", "generate", "--private-key-file", str(target))
    assert refused.returncode == 2 and "--private-key-file" in refused.stderr
    neither = fanout("apps", "vapid", "generate")
    assert neither.returncode == 2 and "KEY" in neither.stderr


def test_secrets_generate_key_makes_a_key_the_settings_take(fanout: Operator) -> None:
    made = fanout.ok("secrets", "generate-key")
    key = made.stdout.strip()
    assert len(decode_key(key)) == 32
    assert f"key {kek_id(decode_key(key))}: set it as FANOUT_SECRET_KEY" in made.stderr
    assert fanout.ok("apps", "list", FANOUT_SECRET_KEY=key).returncode == 0


def test_a_key_belongs_to_its_app_and_an_app_owning_rows_is_not_deleted(
    fanout: Operator,
) -> None:
    fanout.ok("apps", "create", "books-ios")
    made = fanout.ok("apikey", "create", "--scope", "read", "--app", "books-ios", "--name", "ios")
    assert "of the app books-ios" in made.stderr
    key_id = made.stdout.strip().split("_")[1]
    [row] = [line for line in fanout.ok("apikey", "list").stdout.splitlines() if key_id in line]
    assert row.split()[:2] == [key_id, "books-ios"]
    assert one_line(fanout("apikey", "create", "--scope", "read", "--app", "nope"), 1) == (
        "fanout: no app nope (`fanout apps list` shows them)"
    )
    mixed = fanout("apikey", "create", "--scope", "admin", "--scope", "read")
    assert mixed.returncode == 2 and "given alone" in mixed.stderr
    # The app owns a key (revoked ones count too): its rows' foreign keys keep it.
    fanout.ok("apikey", "revoke", key_id)
    refused = one_line(fanout("apps", "delete", "books-ios"), 1)
    assert refused.startswith("fanout: the app books-ios still owns")


async def test_the_admin_api_sets_credentials_checked_and_never_echoes_a_private_key(
    database_url: str, secret_key: str, keys: Keys, sqs_endpoint: str
) -> None:
    import httpx
    from pydantic import SecretStr

    from fanout.api import create_app
    from fanout.api.keys import create_api_key
    from fanout.config import Settings

    settings = Settings(
        database_url=SecretStr(database_url),
        sqs_endpoint_url=sqs_endpoint,
        secret_key=SecretStr(secret_key),
    )
    conn = await store_connect(database_url)
    try:
        _, admin = await create_api_key(conn, ["admin"], "admin")
    finally:
        await conn.close()
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://admin.test",
            headers={"Authorization": f"Bearer {admin}"},
        ) as client,
    ):
        created = await client.post("/v1/apps", json={"key": "books-web", "name": "Books"})
        assert created.status_code == 201, created.text
        assert (await client.post("/v1/apps", json={"key": "books-web"})).status_code == 409
        apns = {
            "key": pem(keys.apns),
            "key_id": "ABC123DEFG",
            "team_id": "TEAM123456",
            "bundle_id": "com.example.books",
        }
        stored = await client.put("/v1/apps/books-web/credentials/apns", json=apns)
        assert stored.status_code == 201, stored.text
        assert stored.json()["identity"]["key_id"] == "ABC123DEFG"
        again = await client.put("/v1/apps/books-web/credentials/apns", json=apns)
        assert again.status_code == 200
        wrong = await client.put(
            "/v1/apps/books-web/credentials/apns", json={**apns, "team_id": "team"}
        )
        assert wrong.status_code == 422 and "team_id" in wrong.text
        generated = await client.put(
            "/v1/apps/books-web/credentials/webpush",
            json={"generate": True, "subject": "mailto:push@example.com"},
        )
        assert generated.status_code == 201 and generated.json()["identity"]["public_key"]
        fcm = await client.put(
            "/v1/apps/books-web/credentials/fcm",
            json={"service_account": orjson.loads(keys.fcm_file.read_bytes())},
        )
        assert fcm.status_code == 201, fcm.text
        shown = await client.get("/v1/apps/books-web")
        assert [c["provider"] for c in shown.json()["credentials"]] == ["apns", "fcm", "webpush"]
        key = await client.post("/v1/apps/books-web/keys", json={"scopes": ["publish"]})
        assert key.status_code == 201 and key.json()["app"] == "books-web"
        listed = await client.get("/v1/apps/books-web/keys")
        assert [k["key_id"] for k in listed.json()] == [key.json()["key_id"]]
        revoked = await client.delete(f"/v1/apps/books-web/keys/{key.json()['key_id']}")
        assert revoked.status_code == 204
        gone = await client.delete("/v1/apps/books-web/credentials/fcm")
        assert gone.status_code == 204
        answers = [r.content for r in (created, stored, again, wrong, generated, fcm, shown)]
    for answer in answers:
        for leak in keys.leaks():
            assert leak not in answer


def test_a_rotation_online_leaves_no_process_unable_to_open_a_credential(
    fanout: Operator, keys: Keys, secret_key: str, tmp_path: Path
) -> None:
    """The new key sealing, the old one still opening (FANOUT_PREVIOUS_SECRET_KEYS)
    everywhere first; then the rotation; then the old key dropped. At no step does a process
    hold a keyring that cannot open some stored credential."""
    no_aws = {
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    starts = "fanout: FANOUT_SQS_ENDPOINT_URL is not set"  # past the key check, to its queues
    set_all_credentials(fanout, keys, "default")
    new_key = fanout.ok("secrets", "generate-key").stdout.strip()
    both = {"FANOUT_SECRET_KEY": new_key, "FANOUT_PREVIOUS_SECRET_KEYS": secret_key}
    assert one_line(fanout("worker", **no_aws, **both), 2).startswith(starts)
    rotated = fanout.ok("secrets", "rotate", "--new-key", new_key, **both)
    assert "resealed 3 credential(s)" in rotated.stderr
    assert one_line(fanout("worker", **no_aws, FANOUT_SECRET_KEY=new_key), 2).startswith(starts)
    # A previous key that is no key: one line naming the setting, the value never shown.
    bad = fanout("worker", **no_aws, FANOUT_SECRET_KEY=new_key,
                 FANOUT_PREVIOUS_SECRET_KEYS=f"{secret_key},not-a-key")  # fmt: skip
    line = one_line(bad, 2)
    assert line.startswith("fanout: FANOUT_PREVIOUS_SECRET_KEYS") and secret_key not in line


async def test_an_event_ended_is_counted_under_its_apps_key(settings: Settings) -> None:
    from fanout.metrics import EVENTS_FINISHED
    from fanout.store import lifecycle
    from tests.unit.test_metrics import _sample

    conn = await store_connect(settings.database_dsn())
    try:
        app = await apps.insert_app(conn, key="finished-app", name="", settings={})
        assert app is not None
        topic = await conn.fetchval(
            "INSERT INTO topics (app_id, key) VALUES ($1, 'finished') RETURNING id", app.id
        )
        event_id = await conn.fetchval(
            "INSERT INTO events (app_id, topic_id, notification) VALUES ($1, $2, '{}') "
            "RETURNING id",
            app.id,
            topic,
        )
        name = "fanout_events_finished_total"
        before = _sample(EVENTS_FINISHED, name, status="failed", app="finished-app")
        assert await lifecycle.fail(conn, event_id=event_id, reason="test")
        after = _sample(EVENTS_FINISHED, name, status="failed", app="finished-app")
        assert after == before + 1
    finally:
        await conn.close()
