"""SignInWithGoogle against the local issuer: ID tokens, code + PKCE, refusals."""

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import jwt
import pytest
from pydantic import ValidationError

from folio.auth.v1 import auth_service_pb2
from folio.user.v1 import user_service_pb2
from tests.fixtures.google_issuer import GoogleIssuer, make_rsa_key, pkce_pair
from tests.integration.auth.conftest import AuthEnv, AuthEnvFactory, bearer, error_info

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def sign_in_with(env: AuthEnv, token: str, nonce: str = "") -> None:
    await env.auth.SignInWithGoogle(
        auth_service_pb2.SignInWithGoogleRequest(id_token=token, nonce=nonce)
    )


async def test_an_id_token_signs_in_and_keys_the_user_on_sub(env: AuthEnv) -> None:
    first = await env.sign_in("sub-1", "first@gmail.com")
    assert first.token_type == "Bearer"
    assert first.expires_in == 900
    assert first.new_user is True
    assert first.user.email == "first@gmail.com"
    header = jwt.get_unverified_header(first.access_token)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": env.secrets.active_kid}
    claims = jwt.decode(first.access_token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "sub", "sid", "iat", "exp", "jti"}
    assert claims["exp"] - claims["iat"] == 900
    assert claims["sid"] == first.session_id
    me = await env.users.GetMe(user_service_pb2.GetMeRequest(), metadata=bearer(first.access_token))
    assert me.user.id == first.user.id

    # Same Google subject with a new address: the same user, e-mail updated.
    second = await env.sign_in("sub-1", "renamed@gmail.com")
    assert second.new_user is False
    assert second.user.id == first.user.id
    assert second.user.email == "renamed@gmail.com"
    assert second.session_id != first.session_id
    assert second.refresh_token != first.refresh_token


@pytest.mark.parametrize(
    "overrides",
    [
        # Each case gets the time of its own run: a claim computed when tests are collected
        # would drift with the suite's duration.
        pytest.param(
            lambda now: {"aud": "someone-else.apps.googleusercontent.com"}, id="wrong-audience"
        ),
        pytest.param(lambda now: {"iss": "https://evil.example.com"}, id="wrong-issuer"),
        pytest.param(lambda now: {"iat": now - 7200, "exp": now - 3600}, id="expired"),
        pytest.param(lambda now: {"email_verified": False}, id="email-not-verified"),
        pytest.param(lambda now: {"email_verified": "true"}, id="email-verified-as-string"),
        pytest.param(lambda now: {"iat": now + 60}, id="issued-in-the-future"),
    ],
)
async def test_bad_google_tokens_are_refused(
    env: AuthEnv, overrides: Callable[[int], dict[str, Any]]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sign_in_with(env, env.issuer.id_token(**overrides(int(time.time()))))
    assert caught.value.code() == UNAUTHENTICATED
    assert error_info(caught.value).reason == "INVALID_GOOGLE_TOKEN"


async def test_forged_google_tokens_are_refused(env: AuthEnv) -> None:
    issuer = env.issuer
    stranger = make_rsa_key(issuer.keys[0].kid)  # same kid, another key
    forged = [
        issuer.id_token(key=stranger),
        issuer.id_token(headers={"kid": "no-such-kid"}),
        jwt.encode(issuer.claims("s", "s@gmail.com"), "secret-" * 6, algorithm="HS256"),
        jwt.encode(issuer.claims("s", "s@gmail.com"), "", algorithm="none"),
        "not.a.token",
        "",
    ]
    for token in forged:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sign_in_with(env, token)
        assert caught.value.code() in (UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT), token


async def test_a_little_clock_skew_is_tolerated(env: AuthEnv) -> None:
    reply = await env.sign_in(iat=int(time.time()) + 5)
    assert reply.access_token


async def test_certificates_are_fetched_once_for_many_sign_ins(env: AuthEnv) -> None:
    before = env.issuer.certs_fetches
    for _ in range(5):
        await env.sign_in()
    # The issuer says max-age=3600: one fetch (none, if this session already cached).
    assert env.issuer.certs_fetches - before <= 1
    fresh = await env.sign_in()
    assert fresh.access_token
    assert env.issuer.certs_fetches - before <= 1


async def test_a_nonce_must_match_and_is_accepted_once(env: AuthEnv) -> None:
    token = env.issuer.id_token(nonce="n-123")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sign_in_with(env, token, nonce="n-other")
    assert error_info(caught.value).reason == "NONCE_MISMATCH"
    await sign_in_with(env, token, nonce="n-123")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sign_in_with(env, env.issuer.id_token(nonce="n-123"), nonce="n-123")
    assert caught.value.code() == UNAUTHENTICATED
    assert error_info(caught.value).reason == "NONCE_REUSED"


async def test_the_hosted_domain_allow_list_is_enforced(make_auth_env: AuthEnvFactory) -> None:
    env: AuthEnv = await make_auth_env(google_hd_allowlist=["example.org"])
    ok = await env.sign_in(email="a@example.org", hd="example.org")
    assert ok.user.email == "a@example.org"
    for claims in ({"hd": "other.org"}, {}):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.sign_in(email="b@gmail.com", **claims)
        assert caught.value.code() == UNAUTHENTICATED


async def test_startup_fails_without_client_ids(make_auth_env: AuthEnvFactory) -> None:
    with pytest.raises(ValidationError, match="FOLIO_GOOGLE_CLIENT_IDS"):
        await make_auth_env(google_client_ids=[])


def authorize(issuer: GoogleIssuer, challenge: str, email: str, nonce: str = "") -> str:
    """Run the authorization endpoint as a browser would; returns the code."""
    params = {
        "client_id": issuer.client_id,
        "redirect_uri": issuer.redirect_uri,
        "response_type": "code",
        "scope": "openid email profile",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": email,
        "state": "st-1",
        **({"nonce": nonce} if nonce else {}),
    }
    response = httpx.get(issuer.authorize_url, params=params, follow_redirects=False)
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == issuer.redirect_uri
    return parse_qs(location.query)["code"][0]


def code_request(
    issuer: GoogleIssuer, code: str, verifier: str, **kw: str
) -> auth_service_pb2.SignInWithGoogleRequest:
    return auth_service_pb2.SignInWithGoogleRequest(
        code=code, code_verifier=verifier, redirect_uri=kw.get("redirect_uri", issuer.redirect_uri)
    )


async def test_code_and_pkce_sign_in(env: AuthEnv) -> None:
    verifier, challenge = pkce_pair()
    code = authorize(env.issuer, challenge, "pkce@gmail.com")
    reply = await env.auth.SignInWithGoogle(code_request(env.issuer, code, verifier))
    assert reply.user.email == "pkce@gmail.com"
    me = await env.users.GetMe(user_service_pb2.GetMeRequest(), metadata=bearer(reply.access_token))
    assert me.user.email == "pkce@gmail.com"
    # A code works once.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.auth.SignInWithGoogle(code_request(env.issuer, code, verifier))
    assert caught.value.code() == UNAUTHENTICATED


async def test_a_wrong_code_verifier_is_refused(env: AuthEnv) -> None:
    _, challenge = pkce_pair()
    wrong_verifier, _ = pkce_pair()
    code = authorize(env.issuer, challenge, "wrong-verifier@gmail.com")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.auth.SignInWithGoogle(code_request(env.issuer, code, wrong_verifier))
    assert caught.value.code() == UNAUTHENTICATED
    assert error_info(caught.value).reason == "INVALID_AUTHORIZATION_CODE"


async def test_the_redirect_uri_must_be_registered_exactly(env: AuthEnv) -> None:
    verifier, challenge = pkce_pair()
    code = authorize(env.issuer, challenge, "redirect@gmail.com")
    before = env.issuer.token_requests
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.auth.SignInWithGoogle(
            code_request(env.issuer, code, verifier, redirect_uri=env.issuer.redirect_uri + "/")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert env.issuer.token_requests == before  # refused before reaching Google


async def test_code_flow_nonce_round_trip(env: AuthEnv) -> None:
    verifier, challenge = pkce_pair()
    code = authorize(env.issuer, challenge, "nonce-code@gmail.com", nonce="code-nonce-1")
    request = code_request(env.issuer, code, verifier)
    request.nonce = "code-nonce-1"
    reply = await env.auth.SignInWithGoogle(request)
    assert reply.user.email == "nonce-code@gmail.com"


async def test_id_token_and_code_together_are_a_bad_request(env: AuthEnv) -> None:
    for request in (
        auth_service_pb2.SignInWithGoogleRequest(),
        auth_service_pb2.SignInWithGoogleRequest(id_token="x.y.z", code="abc"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.auth.SignInWithGoogle(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
