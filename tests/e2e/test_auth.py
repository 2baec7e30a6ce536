"""Sign-in, refresh, sign-out, roles and key rotation through the REST gateway."""

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from libs.secrets import load_secrets
from libs.tokens import sign_service_token
from tests.fixtures.google_issuer import E2E_REFRESH_GRACE_SECONDS, GoogleIssuer, pkce_pair
from tests.fixtures.processes import wait_until
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e

BEARER_CHALLENGE = 'Bearer error="invalid_token"'


@pytest.fixture(scope="module", autouse=True)
def auth_routes(stack: Stack) -> None:
    """Wait until the gateway has read the auth service's routes (it polls reflection)."""

    def served() -> bool:
        return httpx.get(f"{stack.gateway_url}/.well-known/jwks.json").status_code == 200

    wait_until(served, 30, "the gateway to serve the auth routes")


def client_ip() -> str:
    """A client address of this test's own (the stack trusts one proxy hop)."""
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


class Client:
    """A REST client of the gateway, as one device at one address."""

    def __init__(self, stack: Stack) -> None:
        self.http = httpx.Client(
            base_url=stack.gateway_url,
            headers={"X-Forwarded-For": client_ip()},
            timeout=15,
        )

    def sign_in(self, issuer: GoogleIssuer, sub: str | None = None, **claims: Any) -> Any:
        return self.http.post("/api/auth/google", json={"id_token": issuer.id_token(sub, **claims)})

    def refresh(self, token: str) -> httpx.Response:
        return self.http.post("/api/auth/refresh", json={"refresh_token": token})

    def me(self, access_token: str) -> httpx.Response:
        return self.http.get("/api/users/me", headers=bearer(access_token))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == BEARER_CHALLENGE
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"


def test_sign_in_refresh_replay_and_logout(stack: Stack, google_issuer: GoogleIssuer) -> None:
    client = Client(stack)
    signed_in = client.sign_in(google_issuer, email="e2e-auth@gmail.com")
    assert signed_in.status_code == 200, signed_in.text
    body = signed_in.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["user"]["email"] == "e2e-auth@gmail.com"
    me = client.me(body["access_token"])
    assert me.status_code == 200
    assert me.json()["id"] == body["user"]["id"]

    rotated = client.refresh(body["refresh_token"])
    rotated_at = time.monotonic()
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["refresh_token"] != body["refresh_token"]
    assert client.me(new["access_token"]).status_code == 200

    # A second tab a moment later: the same pair, not a theft.
    again = client.refresh(body["refresh_token"])
    assert time.monotonic() - rotated_at < E2E_REFRESH_GRACE_SECONDS
    assert again.status_code == 200
    assert again.json()["refresh_token"] == new["refresh_token"]
    # The scenario is time passing: after the grace window a replay is theft.
    time.sleep(E2E_REFRESH_GRACE_SECONDS + 0.5 - (time.monotonic() - rotated_at))

    # Replaying the rotated token: 401, and the whole session is gone with it.
    assert_401(client.refresh(body["refresh_token"]))
    assert_401(client.refresh(new["refresh_token"]))
    assert_401(client.me(new["access_token"]))

    # Logout: 200 (for unknown tokens too), then the session's tokens are dead.
    second = client.sign_in(google_issuer, email="e2e-auth@gmail.com").json()
    assert client.http.post("/api/auth/logout", json={"refresh_token": "nope"}).status_code == 200
    logout = client.http.post("/api/auth/logout", json={"refresh_token": second["refresh_token"]})
    assert logout.status_code == 200
    assert_401(client.refresh(second["refresh_token"]))
    assert_401(client.me(second["access_token"]))


def test_fifty_parallel_refreshes_rotate_the_token_once(
    stack: Stack, google_issuer: GoogleIssuer
) -> None:
    client = Client(stack)
    token = client.sign_in(google_issuer).json()["refresh_token"]
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda _: client.refresh(token), range(50)))
    issued = {a.json()["refresh_token"] for a in answers if a.status_code == 200}
    # One rotation: every refresh answered within the grace window got its pair, and
    # any that came later was refused as reuse.
    assert len(issued) == 1
    assert {a.status_code for a in answers} <= {200, 401}


def test_sessions_can_be_listed_revoked_and_all_signed_out(
    stack: Stack, google_issuer: GoogleIssuer
) -> None:
    client = Client(stack)
    sub = f"e2e-sessions-{secrets.token_hex(4)}"
    phone = client.sign_in(google_issuer, sub).json()
    laptop = client.sign_in(google_issuer, sub).json()
    listed = client.http.get("/api/auth/sessions", headers=bearer(laptop["access_token"]))
    assert listed.status_code == 200
    sessions = listed.json()["sessions"]
    assert [s["id"] for s in sessions] == [laptop["session_id"], phone["session_id"]]
    assert [s["current"] for s in sessions] == [True, False]

    revoked = client.http.delete(
        f"/api/auth/sessions/{phone['session_id']}", headers=bearer(laptop["access_token"])
    )
    assert revoked.status_code == 200
    assert_401(client.refresh(phone["refresh_token"]))
    assert_401(client.me(phone["access_token"]))

    tablet = client.sign_in(google_issuer, sub).json()
    everywhere = client.http.post(
        "/api/auth/logout-all", json={}, headers=bearer(tablet["access_token"])
    )
    assert everywhere.status_code == 200
    assert everywhere.json()["revoked_sessions"] == 2
    for session in (laptop, tablet):
        assert_401(client.refresh(session["refresh_token"]))
        assert_401(client.me(session["access_token"]))


def test_sign_out_reaches_every_service_within_a_second_while_their_caches_are_warm(
    stack: Stack, google_issuer: GoogleIssuer
) -> None:
    """Services answer revocation checks from memory; a sign-out still reaches each at once."""
    client = Client(stack)
    session = client.sign_in(google_issuer, f"e2e-warm-{secrets.token_hex(4)}").json()
    token = session["access_token"]
    reads = {
        "auth": "/api/auth/sessions",
        "user": "/api/users/me",
        "document": "/api/documents",
        "llm": "/api/llm/usage",
        "task": "/api/tasks",
    }
    for _ in range(3):  # the token verified and its session remembered by every service
        for path in reads.values():
            assert client.http.get(path, headers=bearer(token)).status_code == 200, path

    assert (
        client.http.post(
            "/api/auth/logout", json={"refresh_token": session["refresh_token"]}
        ).status_code
        == 200
    )
    signed_out = time.monotonic()
    refused_after: dict[str, float] = {}
    while len(refused_after) < len(reads) and time.monotonic() - signed_out < 5:
        for name, path in reads.items():
            if name not in refused_after:
                response = client.http.get(path, headers=bearer(token))
                if response.status_code == 401:
                    assert_401(response)
                    refused_after[name] = time.monotonic() - signed_out
    assert set(refused_after) == set(reads), refused_after
    assert max(refused_after.values()) < 1.0, refused_after


@pytest.mark.parametrize(
    "claims",
    [
        # Claims are made when the test runs, from its own clock.
        pytest.param(
            lambda now: {"aud": "another-client.apps.googleusercontent.com"}, id="wrong-audience"
        ),
        pytest.param(lambda now: {"iss": "https://accounts.example.com"}, id="wrong-issuer"),
        pytest.param(lambda now: {"exp": now - 60, "iat": now - 3660}, id="expired"),
        pytest.param(lambda now: {"email_verified": False}, id="email-not-verified"),
    ],
)
def test_bad_google_tokens_get_401(
    stack: Stack, google_issuer: GoogleIssuer, claims: Callable[[int], dict[str, Any]]
) -> None:
    assert_401(Client(stack).sign_in(google_issuer, **claims(int(time.time()))))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_forged_or_foreign_tokens_get_401(stack: Stack, google_issuer: GoogleIssuer) -> None:
    client = Client(stack)
    real = client.sign_in(google_issuer).json()["access_token"]
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    payload = _b64(json.dumps(claims).encode())
    keys = load_secrets(stack.settings)
    public_pem = (
        keys.active_key()
        .private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    alg_none = f"{_b64(json.dumps({**header, 'alg': 'none'}).encode())}.{payload}."
    hs_input = f"{_b64(json.dumps({**header, 'alg': 'HS256'}).encode())}.{payload}"
    hs256 = f"{hs_input}.{_b64(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())}"
    private = keys.active_key().private_key()
    other_typ = jwt.encode(claims, private, algorithm="ES256", headers={**header, "typ": "JWT"})
    unknown_kid = jwt.encode(claims, private, algorithm="ES256", headers={**header, "kid": "x9"})
    service = sign_service_token(keys.internal_token_key, caller="task", audience="user")
    for token in (alg_none, hs256, other_typ, unknown_kid, service):
        assert_401(client.me(token))
    assert client.me(real).status_code == 200


def test_admin_routes_need_an_admin(stack: Stack, google_issuer: GoogleIssuer) -> None:
    client = Client(stack)
    member = client.sign_in(google_issuer).json()
    forbidden = client.http.get("/api/admin/users", headers=bearer(member["access_token"]))
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["status"] == "PERMISSION_DENIED"
    patch = client.http.patch(
        f"/api/admin/users/{member['user']['id']}",
        json={"is_premium": True},
        headers=bearer(member["access_token"]),
    )
    assert patch.status_code == 403

    admin_token = stack.mint_token(f"e2e-admin-{secrets.token_hex(4)}@example.com", admin=True)
    promoted = client.http.patch(
        f"/api/admin/users/{member['user']['id']}",
        json={"is_premium": True},
        headers=bearer(admin_token),
    )
    assert promoted.status_code == 200
    assert promoted.json()["is_premium"] is True
    assert client.me(member["access_token"]).json()["is_premium"] is True
    page = client.http.get("/api/admin/users?page_size=1", headers=bearer(admin_token)).json()
    assert len(page["users"]) == 1
    assert page["next_page_token"]


def authorize(issuer: GoogleIssuer, challenge: str) -> str:
    response = httpx.get(
        issuer.authorize_url,
        params={
            "client_id": issuer.client_id,
            "redirect_uri": issuer.redirect_uri,
            "response_type": "code",
            "scope": "openid email profile",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": f"pkce-{secrets.token_hex(4)}@gmail.com",
        },
    )
    assert response.status_code == 302
    return parse_qs(urlsplit(response.headers["location"]).query)["code"][0]


def test_code_and_pkce(stack: Stack, google_issuer: GoogleIssuer) -> None:
    client = Client(stack)
    verifier, challenge = pkce_pair()
    wrong, _ = pkce_pair()
    refused = client.http.post(
        "/api/auth/google",
        json={
            "code": authorize(google_issuer, challenge),
            "code_verifier": wrong,
            "redirect_uri": google_issuer.redirect_uri,
        },
    )
    assert_401(refused)
    signed_in = client.http.post(
        "/api/auth/google",
        json={
            "code": authorize(google_issuer, challenge),
            "code_verifier": verifier,
            "redirect_uri": google_issuer.redirect_uri,
        },
    )
    assert signed_in.status_code == 200, signed_in.text
    assert client.me(signed_in.json()["access_token"]).status_code == 200


def test_sign_in_attempts_are_rate_limited_with_retry_after(
    stack: Stack, google_issuer: GoogleIssuer
) -> None:
    client = Client(stack)
    limit = int(stack.env["FOLIO_RATE_LIMIT_SIGNIN_PER_IP"])
    statuses = [client.sign_in(google_issuer).status_code for _ in range(limit)]
    assert statuses == [200] * limit
    limited = client.sign_in(google_issuer)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["details"][0]["reason"] == "RATE_LIMITED"
    # Another client address is not affected.
    assert Client(stack).sign_in(google_issuer).status_code == 200


def test_key_rotation_without_restart(stack: Stack, google_issuer: GoogleIssuer) -> None:
    client = Client(stack)
    before = client.sign_in(google_issuer).json()
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    rotated = subprocess.run(
        [sys.executable, "-m", "libs.cli", "keys", "rotate"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    new_kid = rotated.stdout.split("added signing key ", 1)[1].split(":", 1)[0]
    assert new_kid != old_kid

    def published() -> bool:
        keys = client.http.get("/.well-known/jwks.json").json()["keys"]
        return {old_kid, new_kid} <= {key["kid"] for key in keys}

    wait_until(published, 15, "the new key in the JWKS")
    keys = client.http.get("/.well-known/jwks.json").json()["keys"]
    assert all(set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"} for key in keys)

    # Published first, signing later: until then new tokens still carry the old kid.
    latest = {"refresh_token": before["refresh_token"], "access_token": ""}

    def signs_with_new_key() -> bool:
        reply = client.refresh(latest["refresh_token"])
        assert reply.status_code == 200, reply.text
        latest.update(reply.json())
        return bool(jwt.get_unverified_header(latest["access_token"])["kid"] == new_kid)

    wait_until(signs_with_new_key, 30, "tokens signed with the new key")
    # Every service verifies the new kid without a restart; the old token still works.
    assert client.me(latest["access_token"]).status_code == 200
    assert client.me(before["access_token"]).status_code == 200


def test_jwks_is_public_and_cacheable(stack: Stack) -> None:
    response = httpx.get(f"{stack.gateway_url}/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["cache-control"].startswith("public, max-age=")
    assert all("d" not in key for key in response.json()["keys"])
    # Everything else stays uncacheable.
    token = stack.mint_token("cache@example.com")
    me = httpx.get(
        f"{stack.gateway_url}/api/users/me", headers={"authorization": f"Bearer {token}"}
    )
    assert me.headers["cache-control"] == "no-store"
