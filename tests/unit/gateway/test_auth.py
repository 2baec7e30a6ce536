"""Edge authentication with the real token verifier."""

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth import EdgeAuth
from gateway.errors import HttpError
from libs.secrets import SigningKey
from libs.tokens import AccessTokenVerifier, JwksCache, sign_access_token

ISSUER, AUDIENCE = "https://auth.test", "folio-api"


def _key(kid: str) -> SigningKey:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return SigningKey(kid=kid, private_key_pem=pem, created_at=0)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> SigningKey:
    return _key("edge-1")


@pytest.fixture
def fetches() -> list[int]:
    return []


@pytest.fixture
def verifier(key: SigningKey, fetches: list[int]) -> AccessTokenVerifier:
    async def fetch() -> dict[str, Any]:
        fetches.append(1)
        return {"keys": [key.public_jwk()]}

    return AccessTokenVerifier(JwksCache(fetch), issuer=ISSUER, audience=AUDIENCE)


def _token(key: SigningKey, **kw: Any) -> str:
    return sign_access_token(
        key, issuer=kw.pop("issuer", ISSUER), audience=AUDIENCE, user_id="u", session_id="s", **kw
    )


async def test_valid_token_passes(verifier: AccessTokenVerifier, key: SigningKey) -> None:
    await EdgeAuth(verifier).check(f"Bearer {_token(key)}")


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Token abc"],
)
async def test_missing_or_malformed_header_is_401(
    verifier: AccessTokenVerifier, header: str | None
) -> None:
    with pytest.raises(HttpError) as caught:
        await EdgeAuth(verifier).check(header)
    assert caught.value.http_status == 401
    assert (b"www-authenticate", b'Bearer error="invalid_token"') in caught.value.headers


async def test_wrong_issuer_or_foreign_key_is_401(
    verifier: AccessTokenVerifier, key: SigningKey
) -> None:
    auth = EdgeAuth(verifier)
    for token in (_token(key, issuer="https://evil"), _token(_key("edge-1"))):
        with pytest.raises(HttpError):
            await auth.check(f"Bearer {token}")


class CountingVerifier(AccessTokenVerifier):
    calls = 0

    async def verify(self, token: str) -> Any:
        self.calls += 1
        return await super().verify(token)


async def test_verified_tokens_are_trusted_until_cache_or_token_expiry(
    key: SigningKey,
) -> None:
    async def fetch() -> dict[str, Any]:
        return {"keys": [key.public_jwk()]}

    verifier = CountingVerifier(JwksCache(fetch), issuer=ISSUER, audience=AUDIENCE)
    clock = Clock()
    auth = EdgeAuth(verifier, cache_seconds=30, clock=clock)
    token = _token(key, ttl=60)
    await auth.check(f"Bearer {token}")
    await auth.check(f"Bearer {token}")
    assert verifier.calls == 1
    clock.now += 31
    await auth.check(f"Bearer {token}")
    assert verifier.calls == 2
    long_cache = EdgeAuth(verifier, cache_seconds=3600, clock=clock)
    await long_cache.check(f"Bearer {token}")
    # Never trusted past the token's own expiry, however long the cache.
    assert long_cache._trusted[token] <= time.time() + 60


async def test_expired_token_is_401(verifier: AccessTokenVerifier, key: SigningKey) -> None:
    expired = _token(key, ttl=60, now=int(time.time()) - 600)
    with pytest.raises(HttpError):
        await EdgeAuth(verifier).check(f"Bearer {expired}")
