"""Rate limits, the JWKS, and which tokens the auth service's own methods accept."""

import base64
import hashlib
import hmac
import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text

from folio.auth.v1 import auth_service_pb2
from folio.user.v1 import user_service_pb2
from libs.ids import new_id
from libs.tokens import sign_access_token
from services.auth.repository import token_hash
from tests.integration.auth.conftest import (
    AuthEnv,
    AuthEnvFactory,
    bearer,
    error_info,
    forwarded,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def test_sign_in_is_limited_per_client_ip_with_retry_after(
    make_auth_env: AuthEnvFactory,
) -> None:
    env: AuthEnv = await make_auth_env(rate_limit_signin_per_ip=3, rate_limit_window_seconds=60)
    for _ in range(3):
        await env.sign_in(ip="198.51.100.1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.sign_in(ip="198.51.100.1")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "RATE_LIMITED"
    assert 1 <= int(info.metadata["retry_after"]) <= 20
    # Failed attempts count as well, and another address has its own budget.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.auth.SignInWithGoogle(
            auth_service_pb2.SignInWithGoogleRequest(id_token="a.b.c"),
            metadata=forwarded("198.51.100.1"),
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await env.sign_in(ip="198.51.100.2")


async def test_the_client_ip_is_the_last_forwarded_entry(make_auth_env: AuthEnvFactory) -> None:
    env: AuthEnv = await make_auth_env(rate_limit_signin_per_ip=1)
    # A client cannot pick its bucket: the gateway appends the address it saw.
    await env.sign_in(ip="10.0.0.1, 192.0.2.9")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.sign_in(ip="10.0.0.2, 192.0.2.9")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_sign_in_is_limited_per_subject(make_auth_env: AuthEnvFactory) -> None:
    env: AuthEnv = await make_auth_env(rate_limit_signin_per_subject=2)
    await env.sign_in("busy-sub", ip="192.0.2.1")
    await env.sign_in("busy-sub", ip="192.0.2.2")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.sign_in("busy-sub", ip="192.0.2.3")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await env.sign_in("calm-sub", ip="192.0.2.3")


async def test_refresh_is_limited_per_ip_and_per_subject(make_auth_env: AuthEnvFactory) -> None:
    env: AuthEnv = await make_auth_env(
        rate_limit_refresh_per_ip=3, rate_limit_refresh_per_subject=2
    )
    signed_in = await env.sign_in("refresher")
    token = signed_in.refresh_token
    for ip in ("192.0.2.10", "192.0.2.11"):
        reply = await env.auth.RefreshToken(
            auth_service_pb2.RefreshTokenRequest(refresh_token=token), metadata=forwarded(ip)
        )
        token = reply.refresh_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.auth.RefreshToken(
            auth_service_pb2.RefreshTokenRequest(refresh_token=token),
            metadata=forwarded("192.0.2.12"),
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The limited attempt did not consume the token: it is still the current one.
    async with env.database.session() as db:
        current = await db.scalar(
            text("SELECT refresh_hash = :h FROM auth.sessions WHERE id = :id"),
            {"h": token_hash(token), "id": signed_in.session_id},
        )
    assert current is True
    # Guessing from one address runs into the per-IP limit.
    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.auth.RefreshToken(
                auth_service_pb2.RefreshTokenRequest(refresh_token="guess"),
                metadata=forwarded("192.0.2.99"),
            )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_jwks_publishes_public_keys_with_cache_control(env: AuthEnv) -> None:
    call = env.auth.GetJwks(auth_service_pb2.GetJwksRequest())
    reply = await call
    trailers = dict(await call.trailing_metadata() or ())
    assert trailers["cache-control"] == f"public, max-age={env.settings.jwks_ttl_seconds}"
    assert [k.kid for k in reply.keys] == [k.kid for k in env.secrets.signing_keys]
    key = reply.keys[0]
    assert (key.kty, key.crv, key.alg, key.use) == ("EC", "P-256", "ES256", "sig")
    jwk = {f: getattr(key, f) for f in ("kty", "crv", "x", "y", "kid", "alg", "use")}
    assert "d" not in jwk
    public = jwt.PyJWK.from_dict(jwk).key
    signed_in = await env.sign_in()
    claims = jwt.decode(
        signed_in.access_token,
        public,
        algorithms=["ES256"],
        audience=env.settings.token_audience,
        issuer=env.settings.token_issuer,
    )
    assert claims["sub"] == signed_in.user.id


def _b64(data: dict[str, object] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_only_genuine_access_tokens_reach_user_methods(env: AuthEnv) -> None:
    signed_in = await env.sign_in()
    real = signed_in.access_token
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    public_pem = (
        env.secrets.active_key()
        .private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    alg_none = f"{_b64({**header, 'alg': 'none'})}.{_b64(claims)}."
    # HMAC keyed with the public key: the classic algorithm-confusion forgery.
    signing_input = f"{_b64({**header, 'alg': 'HS256'})}.{_b64(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs256_public = f"{signing_input}.{_b64(mac)}"
    key = env.secrets.active_key().private_key()
    other_typ = jwt.encode(claims, key, algorithm="ES256", headers={**header, "typ": "JWT"})
    unknown_kid = jwt.encode(claims, key, algorithm="ES256", headers={**header, "kid": "nokid"})
    expired = sign_access_token(
        env.secrets.active_key(),
        issuer=env.settings.token_issuer,
        audience=env.settings.token_audience,
        user_id=signed_in.user.id,
        session_id=new_id(),
        now=int(time.time()) - 3600,
    )
    service = env.service_token("auth")
    for token in (alg_none, hs256_public, other_typ, unknown_kid, expired, service):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.auth.ListSessions(
                auth_service_pb2.ListSessionsRequest(), metadata=bearer(token)
            )
        assert caught.value.code() == UNAUTHENTICATED, token
    listed = await env.auth.ListSessions(
        auth_service_pb2.ListSessionsRequest(), metadata=bearer(real)
    )
    assert listed.sessions


async def test_service_and_user_tokens_are_not_interchangeable(env: AuthEnv) -> None:
    signed_in = await env.sign_in()
    # A user token on an INTERNAL method.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.users.GetUser(
            user_service_pb2.GetUserRequest(user_id=signed_in.user.id),
            metadata=bearer(signed_in.access_token),
        )
    assert caught.value.code() == UNAUTHENTICATED
    # A service token for another audience on an INTERNAL method.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.users.GetUser(
            user_service_pb2.GetUserRequest(user_id=signed_in.user.id),
            metadata=bearer(env.service_token("auth")),
        )
    assert caught.value.code() == UNAUTHENTICATED
    # A service token on a USER method without acting for a user.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.users.GetMe(
            user_service_pb2.GetMeRequest(), metadata=bearer(env.service_token("user"))
        )
    assert caught.value.code() == UNAUTHENTICATED
    # The right service token works, and so does one acting for the user.
    got = await env.users.GetUser(
        user_service_pb2.GetUserRequest(user_id=signed_in.user.id),
        metadata=bearer(env.service_token("user")),
    )
    assert got.user.id == signed_in.user.id
    me = await env.users.GetMe(
        user_service_pb2.GetMeRequest(),
        metadata=(
            *bearer(env.service_token("user")),
            ("x-folio-on-behalf-of", signed_in.user.id),
        ),
    )
    assert me.user.id == signed_in.user.id
