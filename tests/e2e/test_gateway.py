"""The REST API through the gateway, as a client (curl, a web app) uses it."""

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.processes import run_schemathesis
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e

BEARER_CHALLENGE = 'Bearer error="invalid_token"'
USER_FIELDS = {
    "id",
    "email",
    "display_name",
    "picture_url",
    "is_premium",
    "is_admin",
    "created_at",
    "updated_at",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_get_me_returns_the_user_in_snake_case(stack: Stack) -> None:
    token = stack.mint_token("gw-me@example.com")
    response = httpx.get(f"{stack.gateway_url}/api/users/me", headers=bearer(token))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    user = response.json()
    assert set(user) == USER_FIELDS  # the plain resource (response_body), proto names
    assert user["email"] == "gw-me@example.com"
    assert user["is_premium"] is False
    assert len(user["id"]) == 26
    assert user["created_at"].endswith("Z")


def test_without_a_token_the_answer_is_401_with_a_challenge(stack: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = httpx.get(f"{stack.gateway_url}/api/users/me", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == BEARER_CHALLENGE
        error = response.json()["error"]
        assert error["code"] == 401
        assert error["status"] == "UNAUTHENTICATED"


def test_patch_options_is_a_json_merge_patch(stack: Stack) -> None:
    url = f"{stack.gateway_url}/api/users/me/options"
    headers = bearer(stack.mint_token("gw-options@example.com"))
    first = httpx.patch(
        url, json={"theme": "dark", "lang": "en", "editor": {"font": 12}}, headers=headers
    )
    assert first.status_code == 200
    assert first.json() == {"theme": "dark", "lang": "en", "editor": {"font": 12}}
    assert '"font":12}' in first.text  # not 12.0: Struct numbers keep their integer form
    second = httpx.patch(url, json={"lang": None, "editor": {"wrap": True}}, headers=headers)
    assert second.json() == {"theme": "dark", "editor": {"font": 12, "wrap": True}}
    assert httpx.get(url, headers=headers).json() == second.json()


def test_patch_me_changes_only_the_fields_sent(stack: Stack) -> None:
    url = f"{stack.gateway_url}/api/users/me"
    headers = bearer(stack.mint_token("gw-patch@example.com"))
    before = httpx.get(url, headers=headers).json()
    response = httpx.patch(url, json={"display_name": "Ada"}, headers=headers)
    assert response.status_code == 200
    after = response.json()
    assert after["display_name"] == "Ada"
    assert after["picture_url"] == before["picture_url"]
    assert after["email"] == before["email"]


def test_unknown_field_is_400_naming_it(stack: Stack) -> None:
    headers = bearer(stack.mint_token("gw-strict@example.com"))
    response = httpx.patch(
        f"{stack.gateway_url}/api/users/me", json={"nickname": "x"}, headers=headers
    )
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    violations = [d for d in details if d["@type"].endswith("BadRequest")][0]
    assert violations["field_violations"][0]["field"] == "user.nickname"
    query = httpx.get(f"{stack.gateway_url}/api/users/me", params={"x": 1}, headers=headers)
    assert query.status_code == 400


def bad_request_fields(response: httpx.Response) -> dict[str, str]:
    """The google.rpc.BadRequest field violations of a 400, by field path."""
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    found = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    return {v["field"]: v["description"] for v in found[0]["field_violations"]}


def test_patch_me_refuses_fields_only_the_server_sets(stack: Stack) -> None:
    url = f"{stack.gateway_url}/api/users/me"
    headers = bearer(stack.mint_token("gw-read-only@example.com"))
    before = httpx.get(url, headers=headers).json()
    for body, field in (
        ({"email": "x@y"}, "email"),
        ({"display_name": "Eve", "is_admin": True}, "is_admin"),
    ):
        violations = bad_request_fields(httpx.patch(url, json=body, headers=headers))
        # The gateway fills update_mask from the body's keys; the mask names the field.
        assert list(violations) == [f"update_mask.{field}"]
        assert "output only" in violations[f"update_mask.{field}"]
    # Refused as a whole, before anything was written.
    assert httpx.get(url, headers=headers).json() == before


def test_openapi_marks_what_only_the_server_sets(stack: Stack) -> None:
    document = httpx.get(f"{stack.gateway_url}/openapi.json").json()
    schemas = document["components"]["schemas"]

    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return schemas[ref.rsplit("/", 1)[1]] if ref else schema

    me = document["paths"]["/api/users/me"]
    user = resolved(me["get"]["responses"]["200"]["content"]["application/json"]["schema"])
    assert user["properties"]["email"]["readOnly"] is True
    assert user["properties"]["is_admin"]["readOnly"] is True
    assert "readOnly" not in user["properties"]["display_name"]
    assert set(user["required"]) == USER_FIELDS - {"created_at", "updated_at"}
    patch = me["patch"]["requestBody"]["content"]["application/json"]["schema"]
    writable = resolved(patch)
    assert set(writable["properties"]) == {"display_name", "picture_url"}
    assert writable["additionalProperties"] is False
    refresh = document["paths"]["/api/auth/refresh"]["post"]["requestBody"]
    assert refresh["required"] is True
    assert resolved(refresh["content"]["application/json"]["schema"])["required"] == [
        "refresh_token"
    ]
    task = schemas["folio.task.v1.Task"]["properties"]
    assert task["status"]["readOnly"] is True
    assert task["result"]["readOnly"] is True


def test_wrong_method_is_405_and_unknown_path_is_404(stack: Stack) -> None:
    headers = bearer(stack.mint_token("gw-routing@example.com"))
    wrong = httpx.put(f"{stack.gateway_url}/api/users/me/options", json={}, headers=headers)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, PATCH"
    assert wrong.json()["error"]["code"] == 405
    for path in ("/api/users/nobody", "/internal/users/01HZZZZZZZZZZZZZZZZZZZZZZZ"):
        missing = httpx.get(f"{stack.gateway_url}{path}", headers=headers)
        assert missing.status_code == 404
        assert missing.json()["error"]["status"] == "NOT_FOUND"


def test_request_id_is_echoed(stack: Stack) -> None:
    headers = {**bearer(stack.mint_token("gw-rid@example.com")), "X-Request-ID": "e2e-rid-1"}
    response = httpx.get(f"{stack.gateway_url}/api/users/me", headers=headers)
    assert response.headers["x-request-id"] == "e2e-rid-1"


def test_openapi_and_readiness(stack: Stack) -> None:
    document = httpx.get(f"{stack.gateway_url}/openapi.json").json()
    assert {"get", "patch"} <= set(document["paths"]["/api/users/me"])
    assert document["paths"]["/api/users/me"]["get"]["security"] == [{"bearer": []}]
    assert not [p for p in document["paths"] if p.startswith("/internal")]
    ready = httpx.get(f"{stack.gateway_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["upstreams"]["user"] == "SERVING"


def test_a_stopped_service_gives_503_and_recovers_without_a_gateway_restart(
    stack: Stack,
) -> None:
    url = f"{stack.gateway_url}/api/users/me"
    headers = bearer(stack.mint_token("gw-restart@example.com"))
    assert httpx.get(url, headers=headers).status_code == 200
    gateway_pid = stack.processes["gateway"].pid
    stack.stop_service("user")
    try:
        down = httpx.get(url, headers=headers)
        assert down.status_code == 503
        assert down.json()["error"]["status"] == "UNAVAILABLE"
        not_ready = httpx.get(f"{stack.gateway_url}/readyz")
        assert not_ready.status_code == 503
        assert "user" in not_ready.json()["error"]["details"][0]["metadata"]
    finally:
        stack.start_service("user")
    # The channel reconnects within its (short) backoff; no gateway restart is involved.
    for _ in range(50):
        again = httpx.get(url, headers=headers)
        if again.status_code == 200:
            break
        time.sleep(0.1)
    assert again.status_code == 200
    assert again.json()["email"] == "gw-restart@example.com"
    assert stack.processes["gateway"].pid == gateway_pid


def test_schemathesis_against_the_real_api(stack: Stack, tmp_path: Path) -> None:
    token = stack.mint_token("gw-fuzz@example.com")
    result = run_schemathesis(stack.gateway_url, token, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    junit = (tmp_path / "junit.xml").read_text()
    assert 'failures="0"' in junit
    assert 'errors="0"' in junit
