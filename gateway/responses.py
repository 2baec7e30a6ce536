"""Whole (non-streaming) responses: JSON, errors, and the static bytes of /docs."""

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from gateway.asgi import Header, Receive, Scope, Send
from gateway.errors import HttpError
from gateway.transcode import encode

JSON_TYPE = b"application/json"
NO_STORE = b"no-store"


class Response:
    """A status, headers and a body sent in one piece; not cacheable unless told so."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        media_type: bytes = JSON_TYPE,
        headers: Iterable[Header] = (),
        cache_control: bytes = NO_STORE,
    ) -> None:
        self.status = status
        self.body = body
        self.headers: list[Header]
        if body:
            self.headers = [
                (b"content-type", media_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", cache_control),
                *headers,
            ]
        else:
            # An empty body (204) carries no content headers.
            self.headers = list(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        # HEAD gets GET's headers, Content-Length included, and no body (RFC 9110 9.3.2).
        body = b"" if scope["method"] == "HEAD" else self.body
        await send({"type": "http.response.body", "body": body, "more_body": False})


def json_response(
    value: Any, status: int = HTTPStatus.OK, cache_control: bytes = NO_STORE
) -> Response:
    """``value`` as compact UTF-8 JSON."""
    return Response(status, encode(value), cache_control=cache_control)


def error_response(error: HttpError) -> Response:
    """The AIP-193 JSON of ``error``, with its status and headers."""
    return Response(error.http_status, error.body(), headers=error.headers)
