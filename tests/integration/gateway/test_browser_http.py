"""What browsers and caches rely on, over real HTTP: CORS, gzip, HEAD and entity tags."""

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.processes import free_port
from tests.integration.gateway.conftest import Gateway, Keys, Upstream, gateway_env
from tests.integration.gateway.test_http_api import auth, error_of, stats

LOCAL_PAGE = "http://localhost:5173"
APP = "https://app.example.test"
PREVIEW = "https://pr-12.preview.example.test"
CORS_HEADERS = {
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-allow-credentials",
}


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def configured(
    library: Upstream, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway with its own origins, so dev's localhost default no longer applies."""
    data_dir = tmp_path_factory.mktemp("gw-cors")
    env = gateway_env(
        keys,
        {"library": library.address},
        data_dir,
        FOLIO_GATEWAY_PORT=str(free_port()),
        FOLIO_GATEWAY_CORS_ORIGINS=APP,
        FOLIO_GATEWAY_CORS_ORIGIN_REGEX=r"https://[a-z0-9-]+\.preview\.example\.test",
        FOLIO_GATEWAY_CORS_MAX_AGE_SECONDS="1234",
        FOLIO_GATEWAY_GZIP_LEVEL="0",
    )
    process = Gateway(int(env["FOLIO_GATEWAY_PORT"]), env, data_dir / "gateway.log")
    process.start()
    yield process
    process.stop()


def preflight(origin: str, method: str = "GET", headers: str = "") -> dict[str, str]:
    asked = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        asked["Access-Control-Request-Headers"] = headers
    return asked


def cors_headers_of(response: httpx.Response) -> set[str]:
    return CORS_HEADERS & set(response.headers)


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


async def test_preflight_is_204_with_the_policy_and_never_reaches_the_upstream(
    client: httpx.AsyncClient,
) -> None:
    before = await stats(client)
    asked = "authorization,if-none-match,x-request-id,x-request-timeout"
    # No token: a preflight never carries one, and whoami needs one.
    response = await client.options("/v1/whoami", headers=preflight(LOCAL_PAGE, "GET", asked))
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == LOCAL_PAGE
    assert {"get", "head", "post", "put", "patch", "delete"} <= listed(
        response.headers["access-control-allow-methods"]
    )
    assert {
        "authorization",
        "content-type",
        "if-match",
        "if-none-match",
        "x-request-id",
        "x-request-timeout",
    } <= listed(response.headers["access-control-allow-headers"])
    assert response.headers["access-control-max-age"] == "600"
    assert "origin" in listed(response.headers["vary"])
    assert response.headers["x-request-id"]
    after = await stats(client)
    assert after["calls"] == before["calls"] + 1  # the second stats call, nothing else


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:3000", "http://[::1]:8081", "http://localhost"]
)
async def test_dev_allows_every_local_page(client: httpx.AsyncClient, origin: str) -> None:
    response = await client.options(
        "/v1/shelves/s1/books/b", headers=preflight(origin, "PATCH", "content-type,if-match")
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://localhost.evil.example", "https://localhost:5173"]
)
async def test_a_disallowed_preflight_gets_no_cors_headers(
    client: httpx.AsyncClient, origin: str
) -> None:
    before = await stats(client)
    response = await client.options("/v1/whoami", headers=preflight(origin, "GET", "authorization"))
    assert response.status_code == 204
    assert cors_headers_of(response) == set()
    assert (await stats(client))["calls"] == before["calls"] + 1


async def test_an_allowed_origin_reads_the_answer_and_its_errors(
    client: httpx.AsyncClient, token: str
) -> None:
    ok = await client.get("/v1/whoami", headers={"Origin": LOCAL_PAGE, **auth(token)})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == LOCAL_PAGE
    assert listed(ok.headers["access-control-expose-headers"]) == {
        "x-request-id",
        "retry-after",
        "etag",
        "location",
    }
    assert "origin" in listed(ok.headers["vary"])
    refused = await client.get("/v1/whoami", headers={"Origin": LOCAL_PAGE})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == LOCAL_PAGE
    assert error_of(refused)["status"] == "UNAUTHENTICATED"  # the AIP-193 body, unchanged


async def test_a_disallowed_origin_gets_the_real_answer_without_cors_headers(
    client: httpx.AsyncClient, token: str
) -> None:
    ok = await client.get("/v1/whoami", headers={"Origin": "https://evil.example", **auth(token)})
    assert ok.status_code == 200  # not a 403 that would hide the real answer
    assert ok.json()["authorization"] == f"Bearer {token}"
    assert cors_headers_of(ok) == set()
    assert "origin" in listed(ok.headers["vary"])
    missing = await client.get("/v1/shelves/s1/books/none", headers={"Origin": "https://x.test"})
    assert missing.status_code == 404
    assert cors_headers_of(missing) == set()


async def test_configured_origins_replace_the_dev_default(configured: Gateway) -> None:
    async with httpx.AsyncClient(base_url=configured.url, timeout=10) as http:
        for origin in (APP, PREVIEW):
            answer = await http.options("/v1/whoami", headers=preflight(origin))
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == origin
            assert answer.headers["access-control-max-age"] == "1234"
        for origin in (LOCAL_PAGE, "https://app.example.test.evil", "http://app.example.test"):
            answer = await http.options("/v1/whoami", headers=preflight(origin))
            assert cors_headers_of(answer) == set()


async def test_openapi_is_gzipped_for_a_client_that_asks(client: httpx.AsyncClient) -> None:
    plain = await client.get("/openapi.json", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert int(plain.headers["content-length"]) == len(plain.content) > 10_000
    async with client.stream(
        "GET", "/openapi.json", headers={"Accept-Encoding": "gzip"}
    ) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == len(raw)
    assert "accept-encoding" in listed(response.headers["vary"])
    assert len(raw) * 3 < len(plain.content)
    assert json.loads(gzip.decompress(raw)) == plain.json()


async def test_small_answers_and_clients_that_do_not_ask_get_plain_bodies(
    client: httpx.AsyncClient, configured: Gateway
) -> None:
    small = await client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    assert small.json() == {"status": "ok"}
    # A gateway with compression turned off (level 0) never compresses.
    async with httpx.AsyncClient(base_url=configured.url, timeout=10) as http:
        big = await http.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in big.headers
    assert big.json()["openapi"] == "3.1.0"


async def test_error_bodies_stay_aip193_when_gzipped(client: httpx.AsyncClient) -> None:
    long_message = "the upstream explains at length " * 80
    async with client.stream(
        "POST",
        "/v1/fail",
        json={"code": 9, "reason": "LONG", "message": long_message},
        headers={"Accept-Encoding": "gzip"},
    ) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 400
    assert response.headers["content-encoding"] == "gzip"
    error = json.loads(gzip.decompress(raw))["error"]
    assert error["message"] == long_message
    assert error["status"] == "FAILED_PRECONDITION"
    assert error["details"][0]["reason"] == "LONG"


async def test_sse_is_never_compressed_and_arrives_event_by_event(
    client: httpx.AsyncClient,
) -> None:
    before = await stats(client)
    async with client.stream(
        "GET",
        "/v1/shelves/s1/books:stream",
        params={"count": 3, "interval_seconds": 1.0},
        headers={"Accept": "text/event-stream", "Accept-Encoding": "gzip"},
    ) as response:
        assert "content-encoding" not in response.headers
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.aiter_raw()
        first = await anext(chunks)
        # The first event is readable as sent while the upstream is still streaming.
        assert first.startswith(b"data: ")
        assert json.loads(first.split(b"\n")[0].removeprefix(b"data: "))["page_count"] == "0"
        assert (await stats(client))["finished_streams"] == before["finished_streams"]
        rest = b"".join([chunk async for chunk in chunks])
    events = [e for e in (first + rest).split(b"\n\n") if e.startswith(b"data: ")]
    assert len(events) == 3


async def created_book(client: httpx.AsyncClient, token: str, book_id: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/shelves/etags/books",
        params={"book_id": book_id},
        json={"title": "Etags"},
        headers=auth(token),
    )
    assert response.status_code == 201
    book: dict[str, Any] = response.json()
    assert response.headers["etag"] == f'"{book["etag"]}"'
    return book


async def test_head_is_get_without_a_body_and_one_upstream_call(
    client: httpx.AsyncClient, token: str
) -> None:
    book = await created_book(client, token, "headed")
    url = f"/v1/{book['name']}"
    got = await client.get(url, headers={"Accept-Encoding": "identity"})
    before = await stats(client)
    head = await client.head(url, headers={"Accept-Encoding": "identity"})
    after = await stats(client)
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "cache-control", "etag"):
        assert head.headers[name] == got.headers[name]
    assert int(head.headers["content-length"]) == len(got.content)
    assert after["calls"] == before["calls"] + 2  # the HEAD and the second stats call
    refused = await client.head("/v1/whoami")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"]
    missing = await client.head("/v1/shelves/s1/books/none")
    assert missing.status_code == 404
    assert missing.content == b""


async def test_head_of_a_stream_reads_its_status_and_stops_it(client: httpx.AsyncClient) -> None:
    before = await stats(client)
    head = await client.head(
        "/v1/shelves/s1/books:stream",
        params={"count": 50, "interval_seconds": 0.2},
        headers={"Accept": "text/event-stream"},
    )
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""
    deadline = time.monotonic() + 10
    while (await stats(client))["cancelled_streams"] == before["cancelled_streams"]:
        assert time.monotonic() < deadline, "HEAD left the upstream stream running"
        await asyncio.sleep(0.05)
    after = await stats(client)
    assert after["finished_streams"] == before["finished_streams"]


async def test_gateway_endpoints_answer_head(client: httpx.AsyncClient) -> None:
    head = await client.head("/openapi.json", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 10_000


async def test_a_held_copy_is_not_sent_again(client: httpx.AsyncClient, token: str) -> None:
    book = await created_book(client, token, "held")
    url = "/v1/shelves/etags/books/held"
    first = await client.get(url)
    assert first.headers["etag"] == f'"{book["etag"]}"'
    for held in (
        first.headers["etag"],
        f"W/{first.headers['etag']}",
        f'"x", {first.headers["etag"]}',
    ):
        again = await client.get(url, headers={"If-None-Match": held})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == first.headers["etag"]
        assert "content-type" not in again.headers
        assert "content-length" not in again.headers or again.headers["content-length"] == "0"
    head = await client.head(url, headers={"If-None-Match": first.headers["etag"]})
    assert head.status_code == 304
    stale = await client.get(url, headers={"If-None-Match": '"e0"'})
    assert stale.status_code == 200
    assert stale.json() == first.json()
    # Another GET binding of the same book, and a list, which has no single etag.
    also = await client.get(f"/v1/books/{book['name']}", headers={"If-None-Match": '"e0"'})
    assert also.headers["etag"] == first.headers["etag"]
    listing = await client.get("/v1/shelves/etags/books", headers=auth(token))
    assert "etag" not in listing.headers


async def test_if_match_guards_a_change(client: httpx.AsyncClient, token: str) -> None:
    book = await created_book(client, token, "guarded")
    url = "/v1/shelves/etags/books/guarded"
    stale = await client.patch(
        url, json={"title": "Lost"}, headers={**auth(token), "If-Match": '"e0"'}
    )
    assert stale.status_code == 409
    assert error_of(stale)["details"][0]["reason"] == "ETAG_MISMATCH"
    current = await client.patch(
        url, json={"title": "Kept"}, headers={**auth(token), "If-Match": f'"{book["etag"]}"'}
    )
    assert current.status_code == 200
    assert current.json()["book"]["title"] == "Kept"
    new_etag = current.json()["book"]["etag"]
    assert new_etag != book["etag"]
    assert "etag" not in current.headers  # UpdateBookResponse has no top-level etag
    weak = await client.patch(
        url, json={"title": "Weak"}, headers={**auth(token), "If-Match": f'W/"{new_etag}"'}
    )
    assert weak.status_code == 200
    anything = await client.patch(
        url, json={"title": "Any"}, headers={**auth(token), "If-Match": "*"}
    )
    assert anything.status_code == 200
    assert (await client.get(url)).json()["title"] == "Any"


@pytest.mark.parametrize(
    ("method", "path", "body", "if_match", "field"),
    [
        ("PATCH", "/v1/shelves/etags/books/b", {"title": "t"}, '"a", "b"', "If-Match"),
        ("PATCH", "/v1/shelves/etags/books/b", {"title": "t"}, '"unclosed', "If-Match"),
        ("PATCH", "/v1/shelves/etags/books/b", {"title": "t", "etag": "a"}, '"b"', "If-Match"),
        ("DELETE", "/v1/shelves/etags/books/b", None, '"a"', "If-Match"),
    ],
)
async def test_if_match_that_cannot_apply_is_400(
    client: httpx.AsyncClient,
    token: str,
    method: str,
    path: str,
    body: dict[str, str] | None,
    if_match: str,
    field: str,
) -> None:
    before = await stats(client)
    response = await client.request(
        method, path, json=body, headers={**auth(token), "If-Match": if_match}
    )
    assert response.status_code == 400
    assert field in {
        v["field"] for d in error_of(response)["details"] for v in d.get("field_violations", [])
    }
    assert (await stats(client))["calls"] == before["calls"] + 1  # refused before any call
