"""The gateway over real HTTP in front of a real grpc.aio upstream."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.tokens import sign_access_token
from tests.integration.gateway.conftest import Gateway, Keys, make_key

BEARER_CHALLENGE = 'Bearer error="invalid_token"'


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        yield http


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The AIP-193 error object, after checking the envelope every error must have."""
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["code"] == response.status_code
    infos = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert len(infos) == 1
    return error


def violations_of(response: httpx.Response) -> dict[str, str]:
    error = error_of(response)
    found = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert found, error
    return {v["field"]: v["description"] for v in found[0]["field_violations"]}


async def stats(client: httpx.AsyncClient) -> dict[str, int]:
    return {k: int(v) for k, v in (await client.get("/v1/stats")).json().items()}


async def test_crud_round_trip_with_success_codes_and_snake_case(
    client: httpx.AsyncClient, token: str
) -> None:
    book = {"title": "Dune", "page_count": "412", "author": {"name": "Herbert", "born": 1920}}
    created = await client.post(
        "/v1/shelves/s1/books", params={"book_id": "dune"}, json=book, headers=auth(token)
    )
    assert created.status_code == 201
    assert created.json()["name"] == "shelves/s1/books/dune"
    assert created.json()["page_count"] == "412"  # int64 as a string

    fetched = await client.get("/v1/shelves/s1/books/dune")
    assert fetched.status_code == 200
    assert fetched.json() == created.json()
    assert "pageCount" not in fetched.text

    also = await client.get("/v1/books/shelves/s1/books/dune")  # additional binding, {name=**}
    assert also.json() == created.json()

    listed = await client.get("/v1/shelves/s1/books", headers=auth(token))
    assert [b["name"] for b in listed.json()] == ["shelves/s1/books/dune"]  # response_body

    patched = await client.patch(
        "/v1/shelves/s1/books/dune", json={"title": "Dune Messiah"}, headers=auth(token)
    )
    assert patched.status_code == 200
    assert patched.json()["update_mask"] == "title"  # filled from the body's keys
    assert patched.json()["book"]["title"] == "Dune Messiah"
    assert patched.json()["book"]["page_count"] == "412"  # untouched by the mask

    deleted = await client.delete("/v1/shelves/s1/books/dune", headers=auth(token))
    assert deleted.status_code == 204
    assert deleted.content == b""
    gone = await client.get("/v1/shelves/s1/books/dune")
    assert gone.status_code == 404
    assert error_of(gone)["details"][0]["reason"] == "BOOK_NOT_FOUND"


async def test_premium_method_answers_202(client: httpx.AsyncClient, token: str) -> None:
    response = await client.post(
        "/v1/shelves/s/books/b:archive", json={"reason": "old"}, headers=auth(token)
    )
    assert response.status_code == 202
    assert response.json() == {"name": "shelves/s/books/b", "reason": "old", "task_id": "t1"}


async def test_query_parameters_reach_nested_and_repeated_fields(
    client: httpx.AsyncClient,
) -> None:
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("text", "x"),
        ("author.name", "Le Guin"),
        ("tags", "a"),
        ("tags", "b"),
        ("bigs", "1"),
        ("bigs", "9007199254740993"),
        ("flag", "true"),
        ("genre", "GENRE_HISTORY"),
        ("when", "2024-01-02T03:04:05Z"),
    ]
    echoed = (await client.get("/v1/echo", params=params)).json()
    assert echoed["author"] == {"name": "Le Guin", "born": 0}
    assert echoed["tags"] == ["a", "b"]
    assert echoed["bigs"] == ["1", "9007199254740993"]
    assert echoed["flag"] is True
    assert echoed["genre"] == "GENRE_HISTORY"
    assert echoed["when"] == "2024-01-02T03:04:05Z"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
async def test_missing_or_invalid_token_is_401_before_any_upstream_call(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    before = await stats(client)
    response = await client.get("/v1/whoami", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BEARER_CHALLENGE
    assert error_of(response)["status"] == "UNAUTHENTICATED"
    after = await stats(client)
    assert after["calls"] == before["calls"] + 1  # only the second /v1/stats call


async def test_token_signed_by_an_unknown_key_is_401(client: httpx.AsyncClient) -> None:
    foreign = Keys(make_key("someone-else")).mint()
    response = await client.get("/v1/whoami", headers=auth(foreign))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BEARER_CHALLENGE


async def test_expired_token_is_401(client: httpx.AsyncClient, keys: Keys) -> None:
    # Issued 20 minutes ago with the longest lifetime allowed: expired 5 minutes ago.
    old = sign_access_token(
        keys.key,
        issuer=keys.settings.token_issuer,
        audience=keys.settings.token_audience,
        user_id="u",
        session_id="s",
        now=int(time.time()) - 1200,
    )
    response = await client.get("/v1/whoami", headers=auth(old))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BEARER_CHALLENGE


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/shelves/s/books/b")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PATCH"
    assert error_of(response)["details"][0]["reason"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("path", ["/v1/nowhere", "/api/users/me", "/v1/purge", "/v1/undeclared"])
async def test_unknown_and_internal_paths_are_404(client: httpx.AsyncClient, path: str) -> None:
    for method in ("GET", "POST"):
        response = await client.request(method, path, json={})
        assert response.status_code == 404
        assert error_of(response)["status"] == "NOT_FOUND"


async def test_unknown_body_field_is_400_with_a_violation(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/echo", json={"text": "x", "colour": "red"})
    assert response.status_code == 400
    assert list(violations_of(response)) == ["colour"]


async def test_unknown_query_parameter_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/echo", params={"text": "x", "txet": "y"})
    assert response.status_code == 400
    assert list(violations_of(response)) == ["txet"]


@pytest.mark.parametrize("body", [b"{", b"[1,", b'{"text": "a", "text": "b"}', b"\xff"])
async def test_malformed_json_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/echo", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert error_of(response)["details"][0]["reason"] == "MALFORMED_JSON"


async def test_non_json_body_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/echo", content=b"text=x", headers={"content-type": "a/b"})
    assert response.status_code == 415
    error_of(response)


async def test_oversized_body_is_413_from_content_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/echo",
        content=b'{"text": "' + b"x" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert error_of(response)["details"][0]["reason"] == "BODY_TOO_LARGE"


async def test_oversized_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    response = await client.post(
        "/v1/echo", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


async def test_deeply_nested_json_is_400(client: httpx.AsyncClient) -> None:
    nested: Any = "leaf"
    for _ in range(20):
        nested = {"k": nested}
    response = await client.post("/v1/echo", json={"extra": nested})
    assert response.status_code == 400
    assert error_of(response)["details"][0]["reason"] == "JSON_TOO_DEEP"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (3, 400),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (12, 501),
        (13, 500),
        (14, 503),
        (16, 401),
    ],
)
async def test_grpc_codes_map_to_http_statuses(
    client: httpx.AsyncClient, code: int, status: int
) -> None:
    response = await client.post("/v1/fail", json={"code": code, "message": "told to fail"})
    assert response.status_code == status
    error = error_of(response)
    assert error["message"] == "told to fail"
    assert error["details"][0] == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "FAILED",
        "domain": "library.folio",
        "metadata": {},
    }


async def test_premium_required_is_402(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/fail", json={"code": 7, "reason": "PREMIUM_REQUIRED", "message": "Go premium."}
    )
    assert response.status_code == 402
    assert error_of(response)["status"] == "PERMISSION_DENIED"


async def test_upstream_details_survive_including_unknown_types(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/fail", json={"code": 3, "violation_field": "title", "custom_detail": True}
    )
    details = error_of(response)["details"]
    assert details[1]["field_violations"] == [{"field": "title", "description": "is wrong"}]
    assert details[2] == {
        "@type": "type.googleapis.com/gwtest.v1.CustomDetail",
        "hint": "only the upstream knows this type",
    }


async def test_bare_internal_error_hides_its_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/fail", json={"code": 13, "bare": True})
    assert response.status_code == 500
    assert "10.0.0.1" not in response.text


async def test_deadline_header_becomes_the_grpc_timeout(
    client: httpx.AsyncClient, token: str
) -> None:
    slow = await client.get(
        "/v1/sleep", params={"seconds": 2}, headers={"x-request-timeout": "0.2"}
    )
    assert slow.status_code == 504
    assert error_of(slow)["status"] == "DEADLINE_EXCEEDED"
    default = (await client.get("/v1/whoami", headers=auth(token))).json()["deadline_seconds"]
    assert 9 < default < 10.5  # settings.default_deadline_seconds
    capped = await client.get("/v1/whoami", headers={**auth(token), "x-request-timeout": "999"})
    assert 29 < capped.json()["deadline_seconds"] < 30.5  # FOLIO_GATEWAY_MAX_DEADLINE_SECONDS
    bad = await client.get("/v1/sleep", headers={"x-request-timeout": "soon"})
    assert bad.status_code == 400


async def test_request_id_is_forwarded_echoed_or_generated(
    client: httpx.AsyncClient, token: str
) -> None:
    given = await client.get("/v1/whoami", headers={**auth(token), "x-request-id": "req-123"})
    assert given.headers["x-request-id"] == "req-123"
    assert given.json()["request_id"] == "req-123"
    made = await client.get("/v1/whoami", headers=auth(token))
    assert len(made.headers["x-request-id"]) == 26
    assert made.json()["request_id"] == made.headers["x-request-id"]
    hostile = await client.get("/v1/whoami", headers={**auth(token), "x-request-id": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc"


async def test_only_allowlisted_metadata_goes_up_and_none_comes_down(
    client: httpx.AsyncClient, token: str
) -> None:
    response = await client.get(
        "/v1/whoami",
        headers={**auth(token), "x-folio-on-behalf-of": "someone", "grpc-timeout": "1S"},
    )
    body = response.json()
    assert body["authorization"] == f"Bearer {token}"
    assert "x-folio-on-behalf-of" not in body["metadata_keys"]
    assert body["forwarded_for"] == "127.0.0.1"
    leaked = [h for h in response.headers if "secret" in h or h.startswith("grpc")]
    assert leaked == []
    assert set(response.headers) <= {
        "content-type",
        "content-length",
        "cache-control",
        "x-request-id",
        "date",
        "vary",  # Origin (CORS) and Accept-Encoding (gzip): what caches must key on
    }


async def test_headers_grpc_cannot_carry_are_dropped_not_fatal(
    client: httpx.AsyncClient,
) -> None:
    headers = [(b"x-forwarded-for", "caf\u00e9".encode("latin-1"))]
    headers.append((b"authorization", "Bearer \u00e9t\u00e9".encode("latin-1")))
    response = await client.get("/v1/echo", params={"text": "ok"}, headers=headers)
    assert response.status_code == 200
    assert response.json()["text"] == "ok"


async def test_stream_as_ndjson(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/shelves/s1/books:stream", params={"count": 3})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [b["name"] for b in lines] == [f"shelves/s1/books/{i}" for i in range(3)]


async def test_stream_as_sse_with_a_terminal_error_event(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/shelves/s1/books:stream",
        params={"count": 2, "fail_code": 10},
        headers={"accept": "text/event-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[0].startswith("data: ")
    assert json.loads(events[1].removeprefix("data: "))["page_count"] == "1"
    kind, data = events[2].split("\n")
    assert kind == "event: error"
    error = json.loads(data.removeprefix("data: "))["error"]
    assert error["status"] == "ABORTED"
    assert error["code"] == 409


async def test_stream_failing_before_its_first_message_gets_a_real_status(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/v1/shelves/s1/books:stream",
        params={"count": 0, "fail_code": 5},
        headers={"accept": "text/event-stream"},
    )
    assert response.status_code == 404
    assert error_of(response)["details"][0]["reason"] == "STREAM_FAILED"


async def test_sse_events_are_flushed_as_they_come(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    arrivals: list[float] = []
    async with client.stream(
        "GET",
        "/v1/shelves/s1/books:stream",
        params={"count": 3, "interval_seconds": 0.4},
        headers={"accept": "text/event-stream"},
    ) as response:
        async for chunk in response.aiter_text():
            if "data: " in chunk:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 3
    assert arrivals[0] < 0.35  # the first book is not held back until the stream ends


async def test_idle_sse_streams_get_heartbeat_comments(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/shelves/s1/books:stream",
        params={"count": 2, "interval_seconds": 0.6},
        headers={"accept": "text/event-stream"},
    )
    events = [e for e in response.text.split("\n\n") if e]
    assert events[0].startswith("data: ")
    assert ": keep-alive" in events[1:-1]  # between the two books, none before the first
    ndjson = await client.get(
        "/v1/shelves/s1/books:stream", params={"count": 2, "interval_seconds": 0.6}
    )
    assert "keep-alive" not in ndjson.text


async def test_client_disconnect_cancels_the_upstream_stream(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    before = await stats(client)
    async with httpx.AsyncClient(base_url=gateway.url) as other:
        async with other.stream(
            "GET",
            "/v1/shelves/s1/books:stream",
            params={"count": 100, "interval_seconds": 0.1},
            headers={"accept": "text/event-stream"},
        ) as response:
            async for chunk in response.aiter_text():
                if "data: " in chunk:
                    break
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (await stats(client))["cancelled_streams"] > before["cancelled_streams"]:
            break
        await asyncio.sleep(0.1)
    after = await stats(client)
    assert after["cancelled_streams"] == before["cancelled_streams"] + 1
    assert after["finished_streams"] == before["finished_streams"]


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "upstreams": {"library": "SERVING"}}


async def test_openapi_is_served_live(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    assert "/v1/{parent}/books" in document["paths"]


async def test_docs_are_served_without_a_cdn(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # every asset is local
    bundle = await client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert len(bundle.content) > 100_000
    assert (await client.get("/docs/swagger-ui.css")).status_code == 200
    spec = (await client.get("/docs/openapi.json")).json()
    assert spec["openapi"] == "3.0.3"  # Swagger UI 4 reads 3.0
    assert (await client.get("/docs/../../etc/passwd")).status_code == 404
    assert (await client.get("/docs/nothing.js")).status_code == 404
