"""CORS settings and the CORS layer, over in-memory ASGI."""

import re

import pytest

from gateway.asgi import Message, Receive, Scope, Send
from gateway.config import DEV_CORS_ORIGIN_REGEX, GatewaySettings
from gateway.cors import CORSMiddleware, cors_middleware
from gateway.responses import json_response

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CORS settings from the environment the tests run in."""
    for name in ("ORIGINS", "ORIGIN_REGEX", "METHODS", "HEADERS", "EXPOSE_HEADERS"):
        monkeypatch.delenv(f"FOLIO_GATEWAY_CORS_{name}", raising=False)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    CALLS.append(scope["method"])
    await json_response({"ok": True})(scope, receive, send)


async def run(middleware: object, method: str, *headers: tuple[bytes, bytes]) -> list[Message]:
    scope: Scope = {"type": "http", "method": method, "path": "/x", "headers": list(headers)}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    assert callable(middleware)
    await middleware(scope, receive, send)
    return sent


def headers_of(sent: list[Message]) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost", True),
        ("http://localhost:5173", True),
        ("http://127.0.0.1:8080", True),
        ("http://[::1]:3000", True),
        ("https://localhost:5173", False),
        ("http://localhost.evil.example", False),
        ("http://localhost:5173.evil.example", False),
        ("http://127.0.0.2:8080", False),
        ("null", False),
    ],
)
def test_dev_allows_pages_on_this_machine_only(origin: str, allowed: bool) -> None:
    assert (re.fullmatch(DEV_CORS_ORIGIN_REGEX, origin) is not None) is allowed


def test_without_configuration_dev_allows_local_pages_and_production_none() -> None:
    dev = GatewaySettings(env="dev")
    assert dev.cors_enabled and dev.cors_origin_regex() == DEV_CORS_ORIGIN_REGEX
    production = GatewaySettings(env="production")
    assert not production.cors_enabled
    assert cors_middleware(app, production) is app  # off: not even a layer


def test_configured_origins_replace_the_dev_default() -> None:
    exact = GatewaySettings(env="dev", gateway_cors_origins=["https://app.example.test"])
    assert exact.cors_enabled and exact.cors_origin_regex() is None
    pattern = GatewaySettings(env="production", gateway_cors_origin_regex=r"https://.*\.test")
    assert pattern.cors_enabled and pattern.cors_origin_regex() == r"https://.*\.test"


def test_settings_read_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOLIO_GATEWAY_CORS_ORIGINS", "https://a.test, https://b.test")
    monkeypatch.setenv("FOLIO_GATEWAY_CORS_EXPOSE_HEADERS", '["ETag"]')
    settings = GatewaySettings()
    assert settings.gateway_cors_origins == ["https://a.test", "https://b.test"]
    assert settings.gateway_cors_expose_headers == ["ETag"]


def test_a_broken_regex_fails_at_start_up() -> None:
    with pytest.raises(ValueError):
        GatewaySettings(gateway_cors_origin_regex="(")


@pytest.fixture
def cors() -> CORSMiddleware:
    layer = cors_middleware(app, GatewaySettings(env="dev"))
    assert isinstance(layer, CORSMiddleware)
    CALLS.clear()
    return layer


async def test_a_preflight_never_reaches_the_app(cors: CORSMiddleware) -> None:
    sent = await run(
        cors,
        "OPTIONS",
        (b"origin", b"http://localhost:5173"),
        (b"access-control-request-method", b"DELETE"),
        (b"access-control-request-headers", b"authorization, x-unknown"),
    )
    assert sent[0]["status"] == 204
    headers = headers_of(sent)
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "If-Match" in headers["access-control-allow-headers"]
    # x-unknown is not granted; the browser, reading the policy, refuses it by name.
    assert "x-unknown" not in headers["access-control-allow-headers"].lower()
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b""
    assert CALLS == []


async def test_a_stranger_gets_no_cors_header_but_the_real_answer(cors: CORSMiddleware) -> None:
    preflight = await run(
        cors,
        "OPTIONS",
        (b"origin", b"https://evil.example"),
        (b"access-control-request-method", b"GET"),
    )
    assert preflight[0]["status"] == 204
    assert not [k for k in headers_of(preflight) if k.startswith("access-control-")]
    actual = await run(cors, "GET", (b"origin", b"https://evil.example"))
    assert actual[0]["status"] == 200
    headers = headers_of(actual)
    assert not [k for k in headers if k.startswith("access-control-")]
    assert headers["vary"] == "Origin"
    assert CALLS == ["GET"]


async def test_an_allowed_origin_may_read_the_answer_and_its_headers(cors: CORSMiddleware) -> None:
    sent = await run(cors, "GET", (b"origin", b"http://[::1]:8081"))
    headers = headers_of(sent)
    assert headers["access-control-allow-origin"] == "http://[::1]:8081"
    assert headers["access-control-expose-headers"] == "X-Request-ID, Retry-After, ETag, Location"
    assert "access-control-allow-credentials" not in headers  # Bearer tokens, not cookies
    plain = await run(cors, "GET")  # no Origin: not a browser's cross-origin call
    assert "access-control-allow-origin" not in headers_of(plain)
    assert headers_of(plain)["vary"] == "Origin"
