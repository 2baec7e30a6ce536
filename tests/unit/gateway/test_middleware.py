"""The gateway's middleware layers, each around a small ASGI app, over in-memory ASGI."""

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from gateway.asgi import REQUEST_ID_KEY, Message, Receive, Scope, Send
from gateway.config import GatewaySettings
from gateway.errors import HttpError, unauthenticated
from gateway.middleware import (
    BodyLimitMiddleware,
    ConditionalGetMiddleware,
    ErrorMiddleware,
    RequestIdMiddleware,
    gzip_middleware,
)
from gateway.requests import ClientGone, Request
from gateway.responses import json_response

App = Callable[[Scope, Receive, Send], Awaitable[None]]


def scope(*headers: tuple[bytes, bytes]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/x", "headers": list(headers)}


async def run(app: App, scope: Scope, *chunks: bytes) -> list[Message]:
    """Drive ``app`` with ``chunks`` as the body; the messages it sent."""
    body = chunks or (b"",)
    incoming: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(body) - 1}
        for i, chunk in enumerate(body)
    ]
    incoming.append({"type": "http.disconnect"})
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def status_of(sent: list[Message]) -> int:
    status: int = sent[0]["status"]
    return status


def error_of(sent: list[Message]) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(sent[1]["body"])["error"]
    return error


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    body = await Request(scope, receive).body()
    await json_response({"length": len(body)})(scope, receive, send)


def raising(error: Exception) -> App:
    """An app that fails with ``error`` before answering."""

    async def app(*_: Any) -> None:
        raise error

    return app


def limited(app: App, max_bytes: int = 10) -> App:
    return ErrorMiddleware(BodyLimitMiddleware(app, max_bytes=max_bytes))


async def test_a_body_within_the_limit_is_read_whole() -> None:
    sent = await run(limited(echo_length), scope(), b"12345", b"67890")
    assert json.loads(sent[1]["body"]) == {"length": 10}


async def test_a_declared_length_over_the_limit_is_413_before_reading() -> None:
    sent = await run(limited(echo_length), scope((b"content-length", b"11")), b"x" * 11)
    assert status_of(sent) == 413
    assert error_of(sent)["details"][0]["reason"] == "BODY_TOO_LARGE"
    assert error_of(sent)["details"][0]["metadata"] == {"max_bytes": "10"}


async def test_a_streamed_body_over_the_limit_is_413() -> None:
    sent = await run(limited(echo_length), scope(), b"123456", b"789012")
    assert status_of(sent) == 413


async def test_the_limit_applies_only_when_the_body_is_read() -> None:
    refuses_first = raising(unauthenticated("no token"))
    sent = await run(limited(refuses_first), scope((b"content-length", b"99")), b"x" * 99)
    assert status_of(sent) == 401  # as for a small body: the body was never wanted


async def test_a_malformed_content_length_is_400() -> None:
    sent = await run(limited(echo_length), scope((b"content-length", b"ten")))
    assert status_of(sent) == 400


async def test_errors_become_aip193_json_and_the_unexpected_a_500() -> None:
    fails = raising(HttpError(grpc.StatusCode.NOT_FOUND, "nope", reason="GONE"))
    sent = await run(ErrorMiddleware(fails), scope())
    assert status_of(sent) == 404
    assert dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    assert error_of(sent)["details"][0]["reason"] == "GONE"

    sent = await run(ErrorMiddleware(raising(RuntimeError("a bug"))), scope())
    assert status_of(sent) == 500
    assert error_of(sent)["message"] == "Internal error."


async def test_nothing_is_sent_after_a_response_started_or_to_a_client_gone() -> None:
    async def fails_late(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise HttpError(grpc.StatusCode.INTERNAL, "too late")

    sent = await run(ErrorMiddleware(fails_late), scope())
    assert [m["type"] for m in sent] == ["http.response.start"]

    assert await run(ErrorMiddleware(raising(ClientGone())), scope()) == []


@pytest.mark.parametrize(
    ("given", "kept"), [(b"req-123", True), (b"a b\tc", False), (b"x" * 129, False)]
)
async def test_request_ids_are_kept_when_sane_and_echoed(given: bytes, kept: bool) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope[REQUEST_ID_KEY])
        await json_response({})(scope, receive, send)

    sent = await run(RequestIdMiddleware(app), scope((b"x-request-id", given)))
    echoed = dict(sent[0]["headers"])[b"x-request-id"].decode()
    assert echoed == seen[0]
    assert (echoed == given.decode()) is kept
    if not kept:
        assert len(echoed) == 26  # a new ULID


def etagged(etag: bytes, status: int = 200) -> App:
    """An app answering ``{"etag": ...}`` with that ETag, in two body chunks."""

    async def app(_scope: Scope, _receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"12"),
            (b"cache-control", b"no-store"),
            (b"etag", etag),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"etag":', "more_body": True})
        await send({"type": "http.response.body", "body": b'"e1"}', "more_body": False})

    return app


def conditional(method: str, *conditions: bytes) -> Scope:
    headers = [(b"if-none-match", value) for value in conditions]
    return {"type": "http", "method": method, "path": "/x", "headers": headers}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "conditions", [(b'"e1"',), (b'W/"e1"',), (b'"e0", "e1"',), (b'"e0"', b'"e1"'), (b"*",)]
)
async def test_if_none_match_naming_the_etag_is_304_without_a_body(
    method: str, conditions: tuple[bytes, ...]
) -> None:
    sent = await run(ConditionalGetMiddleware(etagged(b'"e1"')), conditional(method, *conditions))
    assert status_of(sent) == 304
    assert dict(sent[0]["headers"]) == {
        b"cache-control": b"no-store",
        b"etag": b'"e1"',
        b"vary": b"Origin",
    }
    assert [m["body"] for m in sent[1:]] == [b""]


@pytest.mark.parametrize(
    ("method", "conditions", "status"),
    [
        ("GET", (b'"e0"',), 200),  # another version: the full answer
        ("GET", (b'"unclosed',), 200),  # a malformed condition is no condition
        ("GET", (), 200),
        ("PATCH", (b'"e1"',), 200),  # only GET and HEAD are answered 304
        ("GET", (b'"e1"',), 404),  # errors stay errors
    ],
)
async def test_anything_else_passes_unchanged(
    method: str, conditions: tuple[bytes, ...], status: int
) -> None:
    app = ConditionalGetMiddleware(etagged(b'"e1"', status))
    sent = await run(app, conditional(method, *conditions))
    assert status_of(sent) == status
    assert b"".join(m["body"] for m in sent[1:]) == b'{"etag":"e1"}'


async def test_gzip_can_be_turned_off() -> None:
    assert gzip_middleware(echo_length, GatewaySettings(gateway_gzip_level=0)) is echo_length
    assert gzip_middleware(echo_length, GatewaySettings(gateway_gzip_level=1)) is not echo_length


async def test_gzip_leaves_streams_alone_and_compresses_big_json() -> None:
    async def answer(scope: Scope, _receive: Receive, send: Send) -> None:
        kind = scope["path"].encode()
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", kind)]})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"x" * 2000, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    app = gzip_middleware(answer, GatewaySettings(gateway_gzip_level=6, gateway_gzip_min_bytes=1))
    for kind, encoded in [
        ("text/event-stream; charset=utf-8", False),
        ("application/x-ndjson", False),
        ("application/json", True),
    ]:
        request = {
            "type": "http",
            "method": "GET",
            "path": kind,
            "headers": [(b"accept-encoding", b"gzip")],
        }
        sent = await run(app, request)
        assert (b"content-encoding" in dict(sent[0]["headers"])) is encoded, kind
