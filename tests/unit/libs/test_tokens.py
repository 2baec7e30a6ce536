"""Access tokens, service tokens and the JWKS cache, attacked the ways RFC 8725 lists."""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm

from libs.secrets import SigningKey
from libs.tokens import (
    ACCESS_REQUIRED_CLAIMS,
    ACCESS_TOKEN_TTL,
    SERVICE_TOKEN_TTL,
    AccessClaims,
    AccessTokenVerifier,
    InvalidToken,
    JwksCache,
    ServiceClaims,
    ServiceTokenCache,
    configure_default_verifier,
    decode_token,
    sign_access_token,
    sign_service_token,
    verify_service_token,
)

ISSUER = "https://auth.folio.test"
AUDIENCE = "folio-api"
SERVICE_KEY = secrets.token_urlsafe(32)

Signer = Callable[[bytes], bytes]


def make_key(kid: str) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return SigningKey(kid=kid, private_key_pem=pem, created_at=int(time.time()))


KEY = make_key("key-1")
NEXT_KEY = make_key("key-2")
STRANGER = make_key("stranger")


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.public_jwk() for key in keys]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A JWKS endpoint stand-in that counts fetches and can fail or answer garbage."""

    def __init__(self, document: Any, delay: float = 0.0) -> None:
        self.document = document
        self.delay = delay
        self.fetches = 0
        self.error: Exception | None = None

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        document: dict[str, Any] = self.document
        return document


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], payload: dict[str, Any], signer: Signer | None) -> str:
    """A compact JWS built by hand, so tests can produce what PyJWT would refuse to."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64(signature)}"


def es256(key: SigningKey) -> Signer:
    return lambda message: ECAlgorithm(ECAlgorithm.SHA256).sign(message, key.private_key())


def hs256(secret: bytes) -> Signer:
    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


def header(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt", "kid": KEY.kid}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def claims(now: int | None = None, **overrides: Any) -> dict[str, Any]:
    issued_at = int(time.time()) if now is None else now
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "01HZUSER000000000000000000",
        "sid": "01HZSESSION000000000000000",
        "iat": issued_at,
        "exp": issued_at + ACCESS_TOKEN_TTL,
        "jti": "jti-1",
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


@pytest.fixture
async def verifier() -> AccessTokenVerifier:
    cache = JwksCache(Source(jwks(KEY, NEXT_KEY)))
    await cache.refresh()
    return AccessTokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE, leeway=30)


@pytest.fixture
def default_verifier_reset() -> Iterator[None]:
    yield
    configure_default_verifier(None)


# --- access tokens ------------------------------------------------------------------


async def test_signed_access_token_round_trips_to_its_claims(
    verifier: AccessTokenVerifier,
) -> None:
    now = int(time.time())
    token = sign_access_token(
        KEY, issuer=ISSUER, audience=AUDIENCE, user_id="u1", session_id="s1", now=now
    )

    claims_ = await verifier.verify(token)

    assert isinstance(claims_, AccessClaims)
    assert (claims_.user_id, claims_.session_id) == ("u1", "s1")
    assert (claims_.issued_at, claims_.expires_at) == (now, now + ACCESS_TOKEN_TTL)
    assert claims_.token_id
    assert verifier.verify_cached(token) == claims_
    header_ = jwt.get_unverified_header(token)
    assert (header_["alg"], header_["typ"], header_["kid"]) == ("ES256", "at+jwt", "key-1")


def test_each_access_token_gets_its_own_jti() -> None:
    tokens = [
        sign_access_token(KEY, issuer=ISSUER, audience=AUDIENCE, user_id="u", session_id="s")
        for _ in range(2)
    ]
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(jtis) == 2


async def test_hand_built_control_token_is_accepted(verifier: AccessTokenVerifier) -> None:
    # The negative cases below change one thing each from this token.
    token = compact(header(), claims(), es256(KEY))
    assert (await verifier.verify(token)).user_id == "01HZUSER000000000000000000"


async def test_token_signed_by_a_passive_published_key_is_accepted(
    verifier: AccessTokenVerifier,
) -> None:
    token = sign_access_token(
        NEXT_KEY, issuer=ISSUER, audience=AUDIENCE, user_id="u2", session_id="s2"
    )
    assert (await verifier.verify(token)).user_id == "u2"


async def test_expiry_within_leeway_is_accepted(verifier: AccessTokenVerifier) -> None:
    now = int(time.time())
    token = compact(header(), claims(now=now - 100, exp=now - 10), es256(KEY))
    assert (await verifier.verify(token)).expires_at == now - 10


PUBLIC_PEM = (
    KEY.private_key()
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
)


def past() -> int:
    """Long enough ago that a token issued then has expired beyond the leeway."""
    return int(time.time()) - ACCESS_TOKEN_TTL - 31


def future() -> int:
    """Far enough ahead that a token issued then is refused as not yet valid."""
    return int(time.time()) + 3600


OVERSIZE = "x" * 9000

NEGATIVE_ACCESS_TOKENS: dict[str, tuple[Callable[[], object], str]] = {
    "alg none, unsigned": (lambda: compact(header(alg="none"), claims(), None), "malformed"),
    "alg none, junk signature": (
        lambda: compact(header(alg="none"), claims(), lambda _: b"junk"),
        "unexpected alg",
    ),
    "alg noNE": (
        lambda: compact(header(alg="noNE"), claims(), lambda _: b"junk"),
        "unexpected alg",
    ),
    "HS256 with the public key PEM as HMAC secret": (
        lambda: compact(header(alg="HS256"), claims(), hs256(PUBLIC_PEM)),
        "unexpected alg",
    ),
    "ES384 header": (lambda: compact(header(alg="ES384"), claims(), es256(KEY)), "alg"),
    "wrong audience": (
        lambda: compact(header(), claims(aud="orders-grpc"), es256(KEY)),
        "wrong audience",
    ),
    "audience list": (
        lambda: compact(header(), claims(aud=[AUDIENCE, "other"]), es256(KEY)),
        "wrong audience",
    ),
    "wrong issuer": (
        lambda: compact(header(), claims(iss="https://auth.folio.test.evil"), es256(KEY)),
        "wrong issuer",
    ),
    "expired beyond leeway": (lambda: compact(header(), claims(now=past()), es256(KEY)), "expired"),
    "issued in the future": (
        lambda: compact(header(), claims(now=future()), es256(KEY)),
        "not yet valid",
    ),
    "unknown kid": (
        lambda: compact(header(kid=STRANGER.kid), claims(), es256(STRANGER)),
        "unknown signing key",
    ),
    "known kid, foreign signature": (
        lambda: compact(header(), claims(), es256(STRANGER)),
        "bad signature",
    ),
    "embedded jwk and jku are ignored": (
        lambda: compact(
            header(jwk=STRANGER.public_jwk(), jku="http://127.0.0.1:9/jwks.json"),
            claims(),
            es256(STRANGER),
        ),
        "bad signature",
    ),
    "wrong typ": (lambda: compact(header(typ="JWT"), claims(), es256(KEY)), "typ"),
    "refresh typ": (lambda: compact(header(typ="rt+jwt"), claims(), es256(KEY)), "typ"),
    "missing typ": (lambda: compact(header(typ=None), claims(), es256(KEY)), "typ"),
    "service token": (
        lambda: sign_service_token(SERVICE_KEY, caller="user", audience=AUDIENCE),
        "unexpected alg",
    ),
    "service typ on an ES256 token": (
        lambda: compact(header(typ="svc+jwt"), claims(), es256(KEY)),
        "typ",
    ),
    "JWE-shaped five segments": (
        lambda: ".".join([b64(b'{"alg":"RSA-OAEP","enc":"A256GCM"}'), "a", "b", "c", "d"]),
        "malformed",
    ),
    "JSON serialization": (
        lambda: json.dumps(
            {"payload": b64(b"{}"), "signatures": [{"protected": b64(b"{}"), "signature": "x"}]}
        ),
        "malformed",
    ),
    "padded segments": (lambda: compact(header(), claims(), es256(KEY)) + "==", "malformed"),
    "crit header": (lambda: compact(header(crit=["exp"]), claims(), es256(KEY)), "crit"),
    "oversized": (
        lambda: compact(header(), claims(padding=OVERSIZE), es256(KEY)),
        "too large",
    ),
    "path-like kid": (
        lambda: compact(header(kid="../../etc/passwd"), claims(), es256(KEY)),
        "kid",
    ),
    "empty kid": (lambda: compact(header(kid=""), claims(), es256(KEY)), "kid"),
    "65-char kid": (lambda: compact(header(kid="k" * 65), claims(), es256(KEY)), "kid"),
    "numeric kid": (lambda: compact(header(kid=1), claims(), es256(KEY)), "kid"),
    "missing kid": (lambda: compact(header(kid=None), claims(), es256(KEY)), "kid"),
    "header not an object": (
        lambda: f"{b64(b'[1]')}.{b64(json.dumps(claims()).encode())}.{b64(b'sig')}",
        "malformed header",
    ),
    "non-string sub": (lambda: compact(header(), claims(sub=42), es256(KEY)), "invalid token"),
    "string iat": (
        lambda: compact(header(), claims(iat=str(int(time.time()))), es256(KEY)),
        "iat",
    ),
    "bytes input": (lambda: compact(header(), claims(), es256(KEY)).encode(), "not a string"),
    "None input": (lambda: None, "not a string"),
    "empty input": (lambda: "", "malformed"),
}


def _without(claim: str) -> Callable[[], object]:
    return lambda: compact(header(), claims(**{claim: None}), es256(KEY))


for _claim in ACCESS_REQUIRED_CLAIMS:
    NEGATIVE_ACCESS_TOKENS[f"missing {_claim}"] = (_without(_claim), f"missing claim {_claim}")


@pytest.mark.parametrize("case", sorted(NEGATIVE_ACCESS_TOKENS))
async def test_access_token_is_refused(verifier: AccessTokenVerifier, case: str) -> None:
    build, reason = NEGATIVE_ACCESS_TOKENS[case]
    token = build()

    with pytest.raises(InvalidToken, match=reason) as async_error:
        await verifier.verify(token)  # type: ignore[arg-type]
    with pytest.raises(InvalidToken, match=reason):
        verifier.verify_cached(token)  # type: ignore[arg-type]

    if isinstance(token, str) and len(token) > 20:
        assert token not in str(async_error.value)


@pytest.mark.parametrize("leeway", [61, 3600, -1])
def test_verifier_refuses_leeway_outside_zero_to_sixty(leeway: int) -> None:
    cache = JwksCache(Source(jwks(KEY)))
    with pytest.raises(ValueError, match="leeway"):
        AccessTokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE, leeway=leeway)
    with pytest.raises(ValueError, match="leeway"):
        verify_service_token("a.b.c", SERVICE_KEY, audience="user", leeway=leeway)


def test_access_token_ttl_is_capped_at_fifteen_minutes() -> None:
    with pytest.raises(ValueError, match="ttl"):
        sign_access_token(
            KEY, issuer=ISSUER, audience=AUDIENCE, user_id="u", session_id="s", ttl=86400
        )


# --- decode_token -------------------------------------------------------------------


@pytest.mark.usefixtures("default_verifier_reset")
def test_decode_token_without_a_configured_verifier_raises() -> None:
    configure_default_verifier(None)
    with pytest.raises(RuntimeError, match="configure_default_verifier"):
        decode_token("a.b.c")


@pytest.mark.usefixtures("default_verifier_reset")
async def test_decode_token_returns_the_user_id_or_none(verifier: AccessTokenVerifier) -> None:
    configure_default_verifier(verifier)
    token = sign_access_token(
        KEY, issuer=ISSUER, audience=AUDIENCE, user_id="user-7", session_id="s"
    )

    assert decode_token(token) == "user-7"
    assert decode_token(compact(header(), claims(aud="elsewhere"), es256(KEY))) is None
    assert decode_token("not a token") is None


# --- JWKS cache -----------------------------------------------------------------------


async def test_jwks_cache_refreshes_after_ttl_and_sees_rotated_keys() -> None:
    clock = FakeClock()
    source = Source(jwks(KEY))
    cache = JwksCache(source, ttl=300, min_refresh_interval=30, clock=clock)

    assert await cache.get(KEY.kid) is not None
    clock.now += 299
    source.document = jwks(KEY, NEXT_KEY)
    assert cache.peek(NEXT_KEY.kid) is None
    assert await cache.get(KEY.kid) is not None
    assert source.fetches == 1

    clock.now += 1
    assert await cache.get(KEY.kid) is not None
    assert source.fetches == 2
    assert cache.peek(NEXT_KEY.kid) is not None


async def test_jwks_peek_never_fetches() -> None:
    source = Source(jwks(KEY))
    cache = JwksCache(source)
    assert cache.peek(KEY.kid) is None
    assert source.fetches == 0


GARBAGE: dict[str, Any] = {
    "exception": RuntimeError("auth service down"),
    "not an object": ["keys"],
    "keys not a list": {"keys": "nope"},
    "empty key set": {"keys": []},
    "only unusable keys": {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]},
}


@pytest.mark.parametrize("failure", sorted(GARBAGE))
async def test_jwks_cache_keeps_last_good_keys_when_refresh_fails(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    source = Source(jwks(KEY))
    cache = JwksCache(source, ttl=300, min_refresh_interval=30, clock=clock)
    good = await cache.get(KEY.kid)
    assert good is not None

    if isinstance(GARBAGE[failure], Exception):
        source.error = GARBAGE[failure]
    else:
        source.document = GARBAGE[failure]
    clock.now += 301
    with caplog.at_level(logging.WARNING, logger="libs.tokens"):
        assert await cache.get(KEY.kid) is good
    assert source.fetches == 2
    assert "keeping the last good keys" in caplog.text

    # A failed source is not hammered: no retry before min_refresh_interval.
    clock.now += 10
    assert await cache.get(KEY.kid) is good
    assert await cache.get("unknown") is None
    assert source.fetches == 2
    clock.now += 21
    assert await cache.get(KEY.kid) is good
    assert source.fetches == 3


async def test_jwks_cache_refreshes_for_unknown_kid_at_most_once_per_interval() -> None:
    clock = FakeClock()
    source = Source(jwks(KEY))
    cache = JwksCache(source, ttl=300, min_refresh_interval=30, clock=clock)
    await cache.get(KEY.kid)

    clock.now += 31
    for _ in range(5):
        assert await cache.get("random-kid") is None
    assert source.fetches == 2

    clock.now += 29
    assert await cache.get("other-random-kid") is None
    assert source.fetches == 2

    # The next key gets published: a lookup after the interval finds it.
    source.document = jwks(KEY, NEXT_KEY)
    clock.now += 1
    assert await cache.get(NEXT_KEY.kid) is not None
    assert source.fetches == 3


async def test_jwks_cache_single_flight() -> None:
    source = Source(jwks(KEY), delay=0.05)
    cache = JwksCache(source)

    found = await asyncio.gather(*(cache.get(KEY.kid) for _ in range(10)))

    assert source.fetches == 1
    assert all(key is not None for key in found)


async def test_jwks_refresh_survives_a_cancelled_waiter() -> None:
    source = Source(jwks(KEY), delay=0.05)
    cache = JwksCache(source)

    first = asyncio.ensure_future(cache.get(KEY.kid))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(cache.get(KEY.kid))
    await asyncio.sleep(0)
    first.cancel()

    assert await second is not None
    assert source.fetches == 1


async def test_jwks_cache_keeps_only_es256_p256_public_signing_keys() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    document = {
        "keys": [
            {**RSAAlgorithm.to_jwk(rsa_key, as_dict=True), "kid": "rsa"},
            {**HMACAlgorithm.to_jwk(SERVICE_KEY, as_dict=True), "kid": "oct"},
            {**ECAlgorithm.to_jwk(p384, as_dict=True), "kid": "p384"},
            {**ECAlgorithm.to_jwk(KEY.private_key(), as_dict=True), "kid": "has-private-d"},
            {**KEY.public_jwk(), "kid": "enc", "use": "enc"},
            {**KEY.public_jwk(), "kid": "bad kid!"},
            KEY.public_jwk(),
        ]
    }
    cache = JwksCache(Source(document))
    await cache.refresh()
    assert cache.kids == {KEY.kid}


# --- service tokens -------------------------------------------------------------------


def test_service_token_round_trips() -> None:
    now = int(time.time())
    token = sign_service_token(SERVICE_KEY, caller="gateway", audience="user", now=now)

    assert verify_service_token(token, SERVICE_KEY, audience="user") == ServiceClaims(
        caller="gateway", audience="user", expires_at=now + SERVICE_TOKEN_TTL
    )
    header_ = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert (header_["alg"], header_["typ"]) == ("HS256", "svc+jwt")
    assert (payload["sub"], payload["iss"]) == ("svc:gateway", "folio-internal")


def _hs(payload: dict[str, Any], **header_overrides: Any) -> str:
    return compact(
        {"alg": "HS256", "typ": "svc+jwt", **header_overrides}, payload, hs256(SERVICE_KEY.encode())
    )


def _svc_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": "folio-internal",
        "sub": "svc:gateway",
        "aud": "user",
        "iat": now,
        "exp": now + 60,
        "jti": "j",
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


NEGATIVE_SERVICE_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "access token": (
        lambda: sign_access_token(KEY, issuer=ISSUER, audience="user", user_id="u", session_id="s"),
        "unexpected alg",
    ),
    "wrong audience": (
        lambda: sign_service_token(SERVICE_KEY, caller="gateway", audience="document"),
        "wrong audience",
    ),
    "other key": (
        lambda: sign_service_token(secrets.token_urlsafe(32), caller="gateway", audience="user"),
        "bad signature",
    ),
    "expired": (
        lambda: sign_service_token(
            SERVICE_KEY, caller="gateway", audience="user", now=int(time.time()) - 400
        ),
        "expired",
    ),
    "access typ": (lambda: _hs(_svc_claims(), typ="at+jwt"), "typ"),
    "null typ": (lambda: _hs(_svc_claims(), typ=None), "typ"),
    "no typ": (
        lambda: compact({"alg": "HS256"}, _svc_claims(), hs256(SERVICE_KEY.encode())),
        "typ",
    ),
    "wrong issuer": (lambda: _hs(_svc_claims(iss="https://auth.folio.test")), "wrong issuer"),
    "user subject": (lambda: _hs(_svc_claims(sub="01HZUSER")), "malformed sub"),
    "lifetime over five minutes": (lambda: _hs(_svc_claims(exp=int(time.time()) + 3600)), "long"),
    "missing jti": (lambda: _hs(_svc_claims(jti=None)), "missing claim jti"),
    "crit header": (lambda: _hs(_svc_claims(), crit=["exp"]), "crit"),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE_SERVICE_TOKENS))
def test_service_token_is_refused(case: str) -> None:
    build, reason = NEGATIVE_SERVICE_TOKENS[case]
    with pytest.raises(InvalidToken, match=reason):
        verify_service_token(build(), SERVICE_KEY, audience="user")


def test_service_token_control_is_accepted() -> None:
    assert verify_service_token(_hs(_svc_claims()), SERVICE_KEY, audience="user").caller == (
        "gateway"
    )


def test_service_token_ttl_is_capped_and_key_length_checked() -> None:
    with pytest.raises(ValueError, match="ttl"):
        sign_service_token(SERVICE_KEY, caller="gateway", audience="user", ttl=301)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        sign_service_token("short", caller="gateway", audience="user")


def test_service_token_cache_reuses_then_remints_before_expiry() -> None:
    clock = FakeClock()
    # Start in the past so that, after the clock moves on, tokens are current in real time.
    clock.now = float(int(time.time()) - (SERVICE_TOKEN_TTL - 59))
    cache = ServiceTokenCache(SERVICE_KEY, "gateway", clock=clock)

    first = cache.token_for("user")
    assert cache.token_for("user") == first
    assert cache.token_for("document") != first
    assert verify_service_token(cache.token_for("document"), SERVICE_KEY, audience="document")

    clock.now += SERVICE_TOKEN_TTL - 61
    assert cache.token_for("user") == first
    clock.now += 2
    second = cache.token_for("user")
    assert second != first
    assert verify_service_token(second, SERVICE_KEY, audience="user").caller == "gateway"


def test_service_token_cache_is_thread_safe() -> None:
    cache = ServiceTokenCache(SERVICE_KEY, "gateway")
    barrier = threading.Barrier(16)
    tokens: list[str] = []

    def worker() -> None:
        barrier.wait()
        tokens.append(cache.token_for("user"))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(tokens) == 16
    assert len(set(tokens)) == 1
