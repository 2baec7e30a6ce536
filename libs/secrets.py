"""Process secrets: JWT signing keys, the internal token key and third-party API keys.

Sources, first match wins: AWS Secrets Manager (``FOLIO_SECRETS_ID``), environment variables
(``FOLIO_JWT_SIGNING_KEYS`` and friends), or, in dev only, a file generated once in the data
directory.
"""

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets as _random
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from libs.config import Settings

logger = logging.getLogger(__name__)

KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SIGNING_ALGORITHM = "ES256"
DEV_SECRETS_FILE = "secrets.json"
_LOCK_FILE = ".secrets.lock"
# HS256 keys shorter than the hash output are refused by the verifier
# (enforce_minimum_key_length), so refuse them at load time instead.
_MIN_INTERNAL_KEY_BYTES = 32

SecretsSource = Literal["secrets_manager", "env", "generated"]

# Document field -> the environment variable that carries it in the "env" source.
_ENV_NAMES: dict[str, str] = {
    "jwt_signing_keys": "FOLIO_JWT_SIGNING_KEYS",
    "jwt_active_kid": "FOLIO_JWT_ACTIVE_KID",
    "internal_token_key": "FOLIO_INTERNAL_TOKEN_KEY",
    "google_client_secret": "FOLIO_GOOGLE_CLIENT_SECRET",
    "anthropic_api_key": "ANTHROPIC_API_KEY",
}


class SecretsError(Exception):
    """Secrets are missing, malformed or not allowed here; the message never holds a secret."""


@dataclass(frozen=True)
class SigningKey:
    """One ES256 (P-256) signing key; only the auth service ever signs with it."""

    kid: str
    private_key_pem: str = field(repr=False)
    created_at: int

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The parsed private key (parsed once per PEM)."""
        return _parse_private_key(self.private_key_pem)

    def public_jwk(self) -> dict[str, Any]:
        """The RFC 7517 JWK of the public half."""
        jwk = ECAlgorithm.to_jwk(self.private_key().public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": SIGNING_ALGORITHM})
        return jwk


@dataclass(frozen=True)
class Secrets:
    """Everything secret a Folio process may need, and where it came from."""

    signing_keys: tuple[SigningKey, ...]
    active_kid: str
    internal_token_key: str = field(repr=False)
    google_client_secret: str | None = field(repr=False)
    anthropic_api_key: str | None = field(repr=False)
    source: SecretsSource

    def __post_init__(self) -> None:
        kids = [key.kid for key in self.signing_keys]
        if len(set(kids)) != len(kids):
            raise SecretsError("jwt_signing_keys: duplicate kid")
        if self.active_kid not in kids:
            raise SecretsError("jwt_active_kid: no signing key has this kid")

    def active_key(self) -> SigningKey:
        """The key new access tokens are signed with."""
        return next(key for key in self.signing_keys if key.kid == self.active_kid)

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS of every signing key's public half (active, next and retired)."""
        return {"keys": [key.public_jwk() for key in self.signing_keys]}


def load_secrets(settings: Settings) -> Secrets:
    """Load secrets from Secrets Manager, else the environment, else the dev file."""
    if settings.secrets_id:
        loaded = _load_from_secrets_manager(settings)
    elif os.environ.get(_ENV_NAMES["jwt_signing_keys"]):
        loaded = _load_from_env()
    else:
        _refuse_generated_in_production(settings)
        loaded = _load_generated(settings)
    logger.info(
        "secrets loaded",
        extra={
            "secrets_source": loaded.source,
            "active_kid": loaded.active_kid,
            "signing_keys": len(loaded.signing_keys),
        },
    )
    return loaded


def add_signing_key(settings: Settings) -> SigningKey:
    """Add a new passive key to the dev file; publish it before activating it."""
    _require_dev_file_store(settings)
    with _dev_file_locked(settings) as path:
        document = _read_or_create(path)
        labels = _field_labels(path)
        _validate(document, labels, source="generated")
        key = _generate_signing_key()
        document["jwt_signing_keys"].append(_key_document(key))
        _validate(document, labels, source="generated")
        _write_atomically(path, document)
    logger.info("signing key added", extra={"kid": key.kid})
    return key


def activate_signing_key(settings: Settings, kid: str) -> Secrets:
    """Make ``kid`` (already in the dev file) the key new tokens are signed with."""
    _require_dev_file_store(settings)
    with _dev_file_locked(settings) as path:
        document = _read_or_create(path)
        document["jwt_active_kid"] = kid
        loaded = _validate(document, _field_labels(path), source="generated")
        _write_atomically(path, document)
    logger.info("signing key activated", extra={"kid": kid})
    return _with_env_overrides(loaded)


def remove_signing_keys(settings: Settings, kids: Collection[str]) -> Secrets:
    """Drop retired keys from the dev file; the active key can never be dropped."""
    _require_dev_file_store(settings)
    with _dev_file_locked(settings) as path:
        document = _read_or_create(path)
        if document.get("jwt_active_kid") in kids:
            raise SecretsError("the active signing key cannot be removed")
        document["jwt_signing_keys"] = [
            key for key in document.get("jwt_signing_keys") or [] if key.get("kid") not in kids
        ]
        loaded = _validate(document, _field_labels(path), source="generated")
        _write_atomically(path, document)
    logger.info("signing keys removed", extra={"kids": sorted(kids)})
    return _with_env_overrides(loaded)


def _load_from_secrets_manager(settings: Settings) -> Secrets:
    client = boto3.client(
        "secretsmanager",
        endpoint_url=settings.aws_endpoint_url,
        region_name=settings.aws_region,
    )
    try:
        response = client.get_secret_value(SecretId=settings.secrets_id or "")
    except (ClientError, BotoCoreError) as err:
        raise SecretsError(
            f"cannot read secret {settings.secrets_id!r} from Secrets Manager: {err}"
        ) from err
    text = response.get("SecretString")
    if text is None:
        raise SecretsError(f"secret {settings.secrets_id!r} has no SecretString")
    labels = {name: name for name in _ENV_NAMES}
    document = _parse_json(text, f"secret {settings.secrets_id!r}")
    return _validate(document, labels, source="secrets_manager")


def _load_from_env() -> Secrets:
    keys_var = _ENV_NAMES["jwt_signing_keys"]
    document: dict[str, Any] = {
        "jwt_signing_keys": _parse_json(os.environ[keys_var], keys_var),
        "jwt_active_kid": os.environ.get(_ENV_NAMES["jwt_active_kid"]),
        "internal_token_key": os.environ.get(_ENV_NAMES["internal_token_key"]),
        "google_client_secret": os.environ.get(_ENV_NAMES["google_client_secret"]) or None,
        "anthropic_api_key": os.environ.get(_ENV_NAMES["anthropic_api_key"]) or None,
    }
    return _validate(document, _ENV_NAMES, source="env")


def _load_generated(settings: Settings) -> Secrets:
    path = _dev_file(settings)
    # Fast path without the lock: the file is only ever replaced atomically.
    if not path.exists():
        with _dev_file_locked(settings):
            document = _read_or_create(path)
    else:
        document = _read_document(path)
    return _with_env_overrides(_validate(document, _field_labels(path), source="generated"))


def _with_env_overrides(loaded: Secrets) -> Secrets:
    """Third-party keys are never generated; in dev they still come from the environment."""
    google = os.environ.get(_ENV_NAMES["google_client_secret"]) or loaded.google_client_secret
    anthropic = os.environ.get(_ENV_NAMES["anthropic_api_key"]) or loaded.anthropic_api_key
    return Secrets(
        signing_keys=loaded.signing_keys,
        active_kid=loaded.active_kid,
        internal_token_key=loaded.internal_token_key,
        google_client_secret=google,
        anthropic_api_key=anthropic,
        source=loaded.source,
    )


def _refuse_generated_in_production(settings: Settings) -> None:
    if settings.is_production:
        raise SecretsError(
            "production refuses generated dev secrets: set FOLIO_SECRETS_ID "
            "(AWS Secrets Manager) or FOLIO_JWT_SIGNING_KEYS, FOLIO_JWT_ACTIVE_KID "
            "and FOLIO_INTERNAL_TOKEN_KEY"
        )


def _require_dev_file_store(settings: Settings) -> None:
    if settings.secrets_id or os.environ.get(_ENV_NAMES["jwt_signing_keys"]):
        raise SecretsError(
            "signing keys come from Secrets Manager or the environment here; "
            "rotate them there, not in the dev secrets file"
        )
    _refuse_generated_in_production(settings)


def _dev_file(settings: Settings) -> Path:
    return settings.data_dir / DEV_SECRETS_FILE


def _field_labels(path: Path) -> dict[str, str]:
    return {name: f"{path}: {name}" for name in _ENV_NAMES}


@contextlib.contextmanager
def _dev_file_locked(settings: Settings) -> Iterator[Path]:
    """Hold an exclusive flock so concurrent processes generate and edit the file one at a time."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(settings.data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield _dev_file(settings)
    finally:
        # Closing the descriptor releases the lock.
        os.close(lock_fd)


def _read_or_create(path: Path) -> dict[str, Any]:
    """Read the dev file, generating it first if absent; call with the lock held."""
    if path.exists():
        return _read_document(path)
    key = _generate_signing_key()
    document: dict[str, Any] = {
        "jwt_signing_keys": [_key_document(key)],
        "jwt_active_kid": key.kid,
        "internal_token_key": _random.token_urlsafe(32),
        "google_client_secret": None,
        "anthropic_api_key": None,
    }
    _write_atomically(path, document)
    logger.warning("generated dev secrets", extra={"path": str(path), "kid": key.kid})
    return document


def _read_document(path: Path) -> dict[str, Any]:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SecretsError(f"cannot read {path}: {err.strerror}") from None
    if mode & 0o077:
        logger.warning("dev secrets file is readable by others", extra={"path": str(path)})
    document = _parse_json(text, str(path))
    if not isinstance(document, dict):
        raise SecretsError(f"{path}: not a JSON object")
    return document


def _write_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Write via a 0600 temp file and rename, so readers see the old or the new file, whole."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            json.dump(document, tmp, indent=2)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _generate_signing_key() -> SigningKey:
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return SigningKey(
        kid=_random.token_urlsafe(8), private_key_pem=pem, created_at=int(time.time())
    )


def _key_document(key: SigningKey) -> dict[str, Any]:
    return {"kid": key.kid, "private_key_pem": key.private_key_pem, "created_at": key.created_at}


def _parse_json(text: str, label: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as err:
        # The message carries only the position; the document itself is secret.
        position = f"line {err.lineno}" if isinstance(err, json.JSONDecodeError) else "?"
        raise SecretsError(f"{label}: not valid JSON ({position})") from None


@lru_cache(maxsize=64)
def _parse_private_key(pem: str) -> ec.EllipticCurvePrivateKey:
    """Parse a P-256 private key PEM; raises ValueError without echoing the PEM."""
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 EC private key")
    return key


def _validate(document: Any, labels: Mapping[str, str], *, source: SecretsSource) -> Secrets:
    """Turn a secrets document into Secrets; errors name the field, never the value."""
    if not isinstance(document, dict):
        raise SecretsError(f"{source} secrets document: not a JSON object")

    keys_label = labels["jwt_signing_keys"]
    raw_keys = document.get("jwt_signing_keys")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise SecretsError(f"{keys_label}: must be a non-empty list of keys")
    signing_keys: list[SigningKey] = []
    for index, raw in enumerate(raw_keys):
        where = f"{keys_label}[{index}]"
        if not isinstance(raw, dict):
            raise SecretsError(f"{where}: must be an object")
        kid = raw.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise SecretsError(f"{where}.kid: must match [A-Za-z0-9_-]{{1,64}}")
        pem = raw.get("private_key_pem")
        if not isinstance(pem, str):
            raise SecretsError(f"{where}.private_key_pem: must be a string")
        try:
            _parse_private_key(pem)
        except ValueError as err:
            raise SecretsError(f"{where}.private_key_pem: {err}") from None
        created_at = raw.get("created_at")
        if isinstance(created_at, bool) or not isinstance(created_at, int) or created_at < 0:
            raise SecretsError(f"{where}.created_at: must be a non-negative integer")
        signing_keys.append(SigningKey(kid=kid, private_key_pem=pem, created_at=created_at))
    kids = [key.kid for key in signing_keys]
    if len(set(kids)) != len(kids):
        raise SecretsError(f"{keys_label}: duplicate kid")

    active_kid = document.get("jwt_active_kid")
    if not isinstance(active_kid, str) or active_kid not in kids:
        raise SecretsError(f"{labels['jwt_active_kid']}: must be the kid of one of the keys")

    internal = document.get("internal_token_key")
    if not isinstance(internal, str) or len(internal.encode("utf-8")) < _MIN_INTERNAL_KEY_BYTES:
        raise SecretsError(
            f"{labels['internal_token_key']}: must be a string of at least "
            f"{_MIN_INTERNAL_KEY_BYTES} bytes"
        )

    optional: dict[str, str | None] = {}
    for name in ("google_client_secret", "anthropic_api_key"):
        value = document.get(name)
        if value is not None and not isinstance(value, str):
            raise SecretsError(f"{labels[name]}: must be a string or null")
        optional[name] = value or None

    return Secrets(
        signing_keys=tuple(signing_keys),
        active_kid=active_kid,
        internal_token_key=internal,
        google_client_secret=optional["google_client_secret"],
        anthropic_api_key=optional["anthropic_api_key"],
        source=source,
    )
