"""Secrets from a real moto Secrets Manager over HTTP, from the environment, and generated."""

import base64
import json
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from libs.config import Settings
from libs.secrets import (
    DEV_SECRETS_FILE,
    Secrets,
    SecretsError,
    activate_signing_key,
    add_signing_key,
    load_secrets,
)
from libs.tokens import (
    AccessTokenVerifier,
    JwksCache,
    jwks_fetcher_from_secrets,
    sign_access_token,
)
from tests.fixtures.moto import moto_server  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[3]
SECRET_ENV = (
    "FOLIO_SECRETS_ID",
    "FOLIO_ENV",
    "FOLIO_JWT_SIGNING_KEYS",
    "FOLIO_JWT_ACTIVE_KID",
    "FOLIO_INTERNAL_TOKEN_KEY",
    "FOLIO_GOOGLE_CLIENT_SECRET",
    "ANTHROPIC_API_KEY",
)
INTERNAL_KEY = "internal-" + "k" * 40


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def pem(curve: ec.EllipticCurve | None = None) -> str:
    return (
        ec.generate_private_key(curve or ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def document() -> dict[str, Any]:
    return {
        "jwt_signing_keys": [
            {"kid": "2026-05", "private_key_pem": pem(), "created_at": 1_780_000_000},
            {"kid": "2026-11", "private_key_pem": pem(), "created_at": 1_795_000_000},
        ],
        "jwt_active_kid": "2026-05",
        "internal_token_key": INTERNAL_KEY,
        "google_client_secret": "google-secret",
        "anthropic_api_key": None,
    }


def put_secret(endpoint: str, value: str) -> str:
    name = f"folio/test/{uuid.uuid4()}"
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    client.create_secret(Name=name, SecretString=value)
    return name


def sm_settings(endpoint: str, secret_id: str, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        secrets_id=secret_id,
        aws_endpoint_url=endpoint,
        aws_region="us-east-1",
        data_dir=tmp_path,
        **extra,
    )


def secret_values(doc: dict[str, Any]) -> list[str]:
    values = [key["private_key_pem"] for key in doc.get("jwt_signing_keys", [])]
    values += [doc.get("internal_token_key") or "", doc.get("google_client_secret") or ""]
    # A PEM body line is enough to spot a leak.
    strings = [v for v in values if isinstance(v, str) and len(v) > 3]
    return [v.splitlines()[1] if v.startswith("-----") else v for v in strings]


# --- Secrets Manager ------------------------------------------------------------------


@pytest.mark.usefixtures("aws_env")
def test_loads_from_secrets_manager(moto_server: str, tmp_path: Path) -> None:  # noqa: F811
    doc = document()
    secret_id = put_secret(moto_server, json.dumps(doc))

    loaded = load_secrets(sm_settings(moto_server, secret_id, tmp_path, env="production"))

    assert loaded.source == "secrets_manager"
    assert [key.kid for key in loaded.signing_keys] == ["2026-05", "2026-11"]
    assert loaded.active_kid == "2026-05"
    assert loaded.active_key().private_key_pem == doc["jwt_signing_keys"][0]["private_key_pem"]
    assert loaded.active_key().created_at == 1_780_000_000
    assert loaded.internal_token_key == INTERNAL_KEY
    assert loaded.google_client_secret == "google-secret"
    assert loaded.anthropic_api_key is None
    assert not (tmp_path / DEV_SECRETS_FILE).exists()


@pytest.mark.usefixtures("aws_env")
def test_missing_secret_is_a_secrets_error(moto_server: str, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(SecretsError, match="folio/test/absent"):
        load_secrets(sm_settings(moto_server, "folio/test/absent", tmp_path))


def _drop(doc: dict[str, Any], name: str) -> None:
    del doc[name]


CORRUPTIONS: dict[str, tuple[Any, str]] = {
    "no keys": (lambda d: d.update(jwt_signing_keys=[]), "jwt_signing_keys"),
    "active kid absent": (lambda d: d.update(jwt_active_kid="2027-01"), "jwt_active_kid"),
    "active kid missing": (lambda d: _drop(d, "jwt_active_kid"), "jwt_active_kid"),
    "kid charset": (
        lambda d: d["jwt_signing_keys"][1].update(kid="../x"),
        r"jwt_signing_keys\[1\]\.kid",
    ),
    "kid too long": (
        lambda d: d["jwt_signing_keys"][0].update(kid="k" * 65),
        r"jwt_signing_keys\[0\]\.kid",
    ),
    "duplicate kid": (
        lambda d: d["jwt_signing_keys"][1].update(kid="2026-05"),
        "jwt_signing_keys: duplicate kid",
    ),
    "pem garbage": (
        lambda d: d["jwt_signing_keys"][0].update(private_key_pem="-----BEGIN x\nnope\n"),
        r"jwt_signing_keys\[0\]\.private_key_pem",
    ),
    "P-384 key": (
        lambda d: d["jwt_signing_keys"][1].update(private_key_pem=pem(ec.SECP384R1())),
        r"jwt_signing_keys\[1\]\.private_key_pem: not a P-256",
    ),
    "created_at string": (
        lambda d: d["jwt_signing_keys"][0].update(created_at="yesterday"),
        r"jwt_signing_keys\[0\]\.created_at",
    ),
    "short internal key": (lambda d: d.update(internal_token_key="tooshort"), "internal_token_key"),
    "google secret number": (lambda d: d.update(google_client_secret=7), "google_client_secret"),
}


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_invalid_document_names_the_field_not_the_value(
    moto_server: str,  # noqa: F811
    tmp_path: Path,
    case: str,
) -> None:
    doc = document()
    corrupt, field = CORRUPTIONS[case]
    corrupt(doc)
    secret_id = put_secret(moto_server, json.dumps(doc))

    with pytest.raises(SecretsError, match=field) as error:
        load_secrets(sm_settings(moto_server, secret_id, tmp_path))

    for value in secret_values(doc):
        assert value not in str(error.value)


@pytest.mark.usefixtures("aws_env")
def test_secret_that_is_not_json_is_refused(moto_server: str, tmp_path: Path) -> None:  # noqa: F811
    secret_id = put_secret(moto_server, "jwt_signing_keys=hunter2")
    with pytest.raises(SecretsError, match="not valid JSON") as error:
        load_secrets(sm_settings(moto_server, secret_id, tmp_path))
    assert "hunter2" not in str(error.value)


# --- environment ----------------------------------------------------------------------


def set_env(monkeypatch: pytest.MonkeyPatch, doc: dict[str, Any]) -> None:
    monkeypatch.setenv("FOLIO_JWT_SIGNING_KEYS", json.dumps(doc["jwt_signing_keys"]))
    monkeypatch.setenv("FOLIO_JWT_ACTIVE_KID", doc["jwt_active_kid"])
    monkeypatch.setenv("FOLIO_INTERNAL_TOKEN_KEY", doc["internal_token_key"])
    monkeypatch.setenv("FOLIO_GOOGLE_CLIENT_SECRET", "g-env")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")


def test_loads_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    doc = document()
    doc["jwt_active_kid"] = "2026-11"
    set_env(monkeypatch, doc)

    loaded = load_secrets(Settings(data_dir=tmp_path, env="production"))

    assert loaded.source == "env"
    assert loaded.active_kid == "2026-11"
    assert [key.kid for key in loaded.signing_keys] == ["2026-05", "2026-11"]
    assert loaded.internal_token_key == INTERNAL_KEY
    assert (loaded.google_client_secret, loaded.anthropic_api_key) == ("g-env", "sk-ant-env")
    assert not (tmp_path / DEV_SECRETS_FILE).exists()


def test_env_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    set_env(monkeypatch, document())
    monkeypatch.delenv("FOLIO_JWT_ACTIVE_KID")
    with pytest.raises(SecretsError, match="FOLIO_JWT_ACTIVE_KID"):
        load_secrets(Settings(data_dir=tmp_path))

    monkeypatch.setenv("FOLIO_JWT_SIGNING_KEYS", "[{not json")
    with pytest.raises(SecretsError, match="FOLIO_JWT_SIGNING_KEYS: not valid JSON"):
        load_secrets(Settings(data_dir=tmp_path))


# --- generated (dev) ------------------------------------------------------------------


def test_generated_once_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")

    first = load_secrets(settings)
    second = load_secrets(settings)

    assert first.source == "generated"
    assert second == first
    assert len(first.signing_keys) == 1
    assert first.active_kid == first.signing_keys[0].kid
    assert len(base64.urlsafe_b64decode(first.internal_token_key + "=")) == 32
    path = tmp_path / "data" / DEV_SECRETS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["jwt_active_kid"] == first.active_kid
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_generated_takes_third_party_keys_from_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-dev")
    loaded = load_secrets(Settings(data_dir=tmp_path))
    assert loaded.source == "generated"
    assert loaded.anthropic_api_key == "sk-ant-dev"
    assert loaded.google_client_secret is None


def test_concurrent_threads_on_empty_dir_share_one_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fresh")
    barrier = threading.Barrier(8)
    kids: list[str] = []

    def worker() -> None:
        barrier.wait()
        kids.append(load_secrets(settings).active_kid)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(kids) == 8
    assert len(set(kids)) == 1
    stored = json.loads((tmp_path / "fresh" / DEV_SECRETS_FILE).read_text())
    assert [key["kid"] for key in stored["jwt_signing_keys"]] == kids[:1]


_CHILD = """
import sys
from pathlib import Path

from libs.config import Settings
from libs.secrets import load_secrets

settings = Settings(data_dir=Path(sys.argv[1]))
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.readline()
sys.stdout.write(load_secrets(settings).active_kid + "\\n")
"""


def test_concurrent_processes_on_empty_dir_share_one_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(data_dir)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        # Release all children at once, after each has finished importing.
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        kids = [child.communicate(timeout=30)[0].strip() for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    assert all(child.returncode == 0 for child in children)
    assert len(set(kids)) == 1
    assert kids[0] == json.loads((data_dir / DEV_SECRETS_FILE).read_text())["jwt_active_kid"]


def test_production_refuses_generated_secrets(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match="production refuses generated"):
        load_secrets(Settings(data_dir=tmp_path / "new", env="production"))
    assert not (tmp_path / "new" / DEV_SECRETS_FILE).exists()

    load_secrets(Settings(data_dir=tmp_path / "old"))
    with pytest.raises(SecretsError, match="production refuses generated"):
        load_secrets(Settings(data_dir=tmp_path / "old", env="production"))
    with pytest.raises(SecretsError, match="production refuses generated"):
        add_signing_key(Settings(data_dir=tmp_path / "old", env="production"))


def test_corrupt_dev_file_is_not_silently_regenerated(tmp_path: Path) -> None:
    (tmp_path / DEV_SECRETS_FILE).write_text("{broken")
    with pytest.raises(SecretsError, match=DEV_SECRETS_FILE):
        load_secrets(Settings(data_dir=tmp_path))
    assert (tmp_path / DEV_SECRETS_FILE).read_text() == "{broken"


# --- rotation in the dev store ----------------------------------------------------------


def test_added_key_is_published_passive_then_activated(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    original = load_secrets(settings)

    added = add_signing_key(settings)
    after_add = load_secrets(settings)
    assert after_add.active_kid == original.active_kid
    assert added.kid != original.active_kid
    assert [k["kid"] for k in after_add.public_jwks()["keys"]] == [original.active_kid, added.kid]

    activated = activate_signing_key(settings, added.kid)
    assert activated.active_kid == added.kid
    assert load_secrets(settings).active_key() == added
    assert stat.S_IMODE((tmp_path / DEV_SECRETS_FILE).stat().st_mode) == 0o600

    with pytest.raises(SecretsError, match="jwt_active_kid"):
        activate_signing_key(settings, "no-such-kid")
    assert load_secrets(settings).active_kid == added.kid


def test_rotation_helpers_refuse_non_dev_stores(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    set_env(monkeypatch, document())
    with pytest.raises(SecretsError, match="not in the dev secrets file"):
        add_signing_key(Settings(data_dir=tmp_path))
    with pytest.raises(SecretsError, match="not in the dev secrets file"):
        activate_signing_key(Settings(data_dir=tmp_path), "2026-11")
    assert not (tmp_path / DEV_SECRETS_FILE).exists()


# --- public JWKS --------------------------------------------------------------------------


def test_public_jwks_has_only_public_parts(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    add_signing_key(settings)
    loaded = load_secrets(settings)

    keys = loaded.public_jwks()["keys"]

    assert len(keys) == 2
    for jwk, signing_key in zip(keys, loaded.signing_keys, strict=True):
        assert "d" not in jwk
        assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("EC", "P-256", "sig", "ES256")
        assert jwk["kid"] == signing_key.kid
        numbers = signing_key.private_key().public_key().public_numbers()
        assert int.from_bytes(base64.urlsafe_b64decode(jwk["x"] + "=")) == numbers.x
        assert int.from_bytes(base64.urlsafe_b64decode(jwk["y"] + "=")) == numbers.y
    assert "PRIVATE" not in json.dumps(loaded.public_jwks())


def test_repr_shows_no_secret(tmp_path: Path) -> None:
    loaded = load_secrets(Settings(data_dir=tmp_path))
    text = repr(loaded)
    assert loaded.internal_token_key not in text
    assert "PRIVATE KEY" not in text
    assert loaded.active_kid in text


@pytest.fixture
def dev_settings(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(data_dir=tmp_path, token_issuer="https://auth.folio.test")


async def test_tokens_signed_with_dev_key_verify_through_secrets_jwks(
    dev_settings: Settings,
) -> None:
    loaded = load_secrets(dev_settings)
    cache = JwksCache(jwks_fetcher_from_secrets(dev_settings), ttl=300)
    verifier = AccessTokenVerifier(
        cache, issuer=dev_settings.token_issuer, audience=dev_settings.token_audience
    )
    token = sign_access_token(
        loaded.active_key(),
        issuer=dev_settings.token_issuer,
        audience=dev_settings.token_audience,
        user_id="u-1",
        session_id="s-1",
        now=int(time.time()),
    )

    assert (await verifier.verify(token)).user_id == "u-1"
    assert cache.kids == {loaded.active_kid}


def test_secrets_refuses_an_active_kid_without_a_key() -> None:
    with pytest.raises(SecretsError, match="jwt_active_kid"):
        Secrets(
            signing_keys=(),
            active_kid="x",
            internal_token_key=INTERNAL_KEY,
            google_client_secret=None,
            anthropic_api_key=None,
            source="env",
        )
