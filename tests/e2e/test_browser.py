"""Folio from a web app's side: a real headless browser on other origins, HEAD and etags.

The browser tests drive Debian's Chromium through Playwright (never Playwright's own
browser download). Without a chromium binary they skip, except in CI, where they must run.
"""

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGE = b"<!doctype html><meta charset=utf-8><title>A web app</title><p>Folio client</p>"
# What a web app's script does: fetch, then read the status, the JSON and exposed headers.
FETCH = """
async ({url, method, headers, body}) => {
  try {
    const response = await fetch(url, {method, headers, body, cache: "no-store"});
    const text = await response.text();
    return {
      status: response.status,
      json: text ? JSON.parse(text) : null,
      etag: response.headers.get("ETag"),
      requestId: response.headers.get("X-Request-ID"),
    };
  } catch (error) {
    return {error: String(error)};
  }
}
"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output to the tests


class PageServer:
    """A tiny HTTP server for the web app's page: its origin is what CORS decides on."""

    def __init__(self, bind: str, host: str) -> None:
        self.server = ThreadingHTTPServer((bind, 0), _PageHandler)
        self.origin = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def allowed_page() -> Iterator[PageServer]:
    """A page on http://localhost:<port>: dev allows local origins by default."""
    server = PageServer("127.0.0.1", "localhost")
    yield server
    server.close()


@pytest.fixture(scope="module")
def disallowed_page() -> Iterator[PageServer]:
    """A page on http://127.0.0.2:<port>: loopback too, but not an origin dev allows."""
    server = PageServer("127.0.0.2", "127.0.0.2")
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for CI")
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def call(page: Page, url: str, method: str = "GET", **options: Any) -> dict[str, Any]:
    """``fetch`` from ``page``'s origin, as its script would."""
    headers: dict[str, str] = options.get("headers", {})
    body = options.get("body")
    result: dict[str, Any] = page.evaluate(
        FETCH, {"url": url, "method": method, "headers": headers, "body": body}
    )
    return result


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_page_on_an_allowed_origin_reads_the_api(
    stack: Stack, page: Page, allowed_page: PageServer
) -> None:
    token = stack.mint_token("browser-allowed@example.com")
    page.goto(allowed_page.origin)
    result = call(page, f"{stack.gateway_url}/api/users/me", headers=bearer(token))
    assert result.get("error") is None, result
    assert result["status"] == 200
    assert result["json"]["email"] == "browser-allowed@example.com"
    assert len(result["requestId"]) == 26  # an exposed header the script may read
    refused = call(page, f"{stack.gateway_url}/api/users/me")
    assert refused["status"] == 401  # the error itself is readable, in its AIP-193 shape
    assert refused["json"]["error"]["status"] == "UNAUTHENTICATED"


def test_a_page_on_another_origin_is_blocked_by_the_browser(
    stack: Stack, page: Page, disallowed_page: PageServer
) -> None:
    token = stack.mint_token("browser-blocked@example.com")
    page.goto(disallowed_page.origin)
    with page.expect_console_message(lambda m: "CORS policy" in m.text) as logged:
        result = call(page, f"{stack.gateway_url}/api/users/me", headers=bearer(token))
    assert "status" not in result
    assert "Failed to fetch" in result["error"]
    assert disallowed_page.origin in logged.value.text
    # The gateway answered; it gave that origin no CORS header, so the browser refused.
    preflight = httpx.options(
        f"{stack.gateway_url}/api/users/me",
        headers={
            "Origin": disallowed_page.origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert "access-control-allow-origin" not in preflight.headers


def test_a_page_edits_a_document_with_etags(
    stack: Stack, page: Page, allowed_page: PageServer
) -> None:
    auth = bearer(stack.mint_token("browser-etags@example.com"))
    json_auth = {**auth, "Content-Type": "application/json"}
    page.goto(allowed_page.origin)
    documents = f"{stack.gateway_url}/api/documents"
    created = call(page, documents, "POST", headers=json_auth, body='{"title":"t","content":"c"}')
    assert created["status"] == 201, created
    etag = created["etag"]
    assert etag == f'"{created["json"]["etag"]}"'
    url = f"{documents}/{created['json']['id']}"
    held = call(page, url, headers={**auth, "If-None-Match": etag})
    assert held["status"] == 304
    assert held["json"] is None
    stale = call(
        page, url, "PATCH", headers={**json_auth, "If-Match": '"stale"'}, body='{"title":"x"}'
    )
    assert stale["status"] == 409
    assert stale["json"]["error"]["status"] == "ABORTED"
    changed = call(
        page, url, "PATCH", headers={**json_auth, "If-Match": etag}, body='{"title":"t2"}'
    )
    assert changed["status"] == 200
    assert changed["json"]["title"] == "t2"
    assert changed["etag"] == f'"{changed["json"]["etag"]}"' != etag


def test_a_preflight_needs_no_token_and_answers_204(stack: Stack) -> None:
    response = httpx.options(
        f"{stack.gateway_url}/api/users/me",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization,content-type,if-match",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "PATCH" in response.headers["access-control-allow-methods"]
    assert "If-Match" in response.headers["access-control-allow-headers"]


def test_head_answers_like_get_without_a_body(stack: Stack) -> None:
    headers = {**bearer(stack.mint_token("head@example.com")), "Accept-Encoding": "identity"}
    got = httpx.get(f"{stack.gateway_url}/api/users/me", headers=headers)
    head = httpx.head(f"{stack.gateway_url}/api/users/me", headers=headers)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == str(len(got.content))


def test_a_document_already_held_is_not_sent_again(stack: Stack) -> None:
    headers = bearer(stack.mint_token("etag-get@example.com"))
    created = httpx.post(
        f"{stack.gateway_url}/api/documents",
        json={"title": "t", "content": "c"},
        headers=headers,
    )
    assert created.status_code == 201
    url = f"{stack.gateway_url}/api/documents/{created.json()['id']}"
    first = httpx.get(url, headers=headers)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag == f'"{first.json()["etag"]}"' == created.headers["etag"]
    second = httpx.get(url, headers={**headers, "If-None-Match": etag})
    assert second.status_code == 304
    assert second.content == b""
    assert second.headers["etag"] == etag
    changed = httpx.patch(url, json={"content": "c2"}, headers=headers)
    assert changed.headers["etag"] != etag
    third = httpx.get(url, headers={**headers, "If-None-Match": etag})
    assert third.status_code == 200  # the held copy is stale now
    assert third.json()["content"] == "c2"


def test_if_match_makes_changes_conditional(stack: Stack) -> None:
    headers = bearer(stack.mint_token("etag-match@example.com"))
    created = httpx.post(
        f"{stack.gateway_url}/api/documents",
        json={"title": "t", "content": "c"},
        headers=headers,
    )
    url = f"{stack.gateway_url}/api/documents/{created.json()['id']}"
    etag = created.headers["etag"]
    stale = httpx.patch(url, json={"title": "lost"}, headers={**headers, "If-Match": '"old"'})
    assert stale.status_code == 409
    assert stale.json()["error"]["status"] == "ABORTED"
    current = httpx.patch(url, json={"title": "kept"}, headers={**headers, "If-Match": etag})
    assert current.status_code == 200
    assert current.json()["title"] == "kept"
    conflicting = httpx.patch(
        url,
        json={"title": "x", "etag": "one"},
        headers={**headers, "If-Match": '"two"'},
    )
    assert conflicting.status_code == 400
    gone = httpx.delete(url, headers={**headers, "If-Match": etag})  # stale since the PATCH
    assert gone.status_code == 409
    deleted = httpx.delete(url, headers={**headers, "If-Match": current.headers["etag"]})
    assert deleted.status_code == 204
