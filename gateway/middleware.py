"""Cross-cutting HTTP concerns as ASGI middleware, each wrapping the app it is given.

The gateway stacks them, outermost first: request id, access log, CORS (gateway.cors),
compression, errors, conditional GET, body limit. Each passes non-HTTP scopes (the
lifespan) straight through.
"""

import logging
import re
import time
from http import HTTPStatus

import grpc
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware

from gateway.asgi import REQUEST_ID_KEY, ASGIApp, Message, Receive, Scope, Send
from gateway.config import GatewaySettings
from gateway.errors import HttpError, bad_request, body_too_large
from gateway.etags import NOT_MODIFIED_HEADERS, none_match
from gateway.requests import ClientGone
from gateway.responses import error_response
from libs.ids import new_id
from libs.logs import request_id_var

log = logging.getLogger(__name__)
access_log = logging.getLogger("folio.access")

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Names each request: the client's X-Request-ID when it is sane, else a new ULID.

    The id goes into the log context, the scope (for the upstream metadata) and the
    response's X-Request-ID header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for key, value in scope["headers"]:
            if key == REQUEST_ID_HEADER:
                request_id = value.decode("latin-1")
                break
        if request_id is None or not _VALID_REQUEST_ID.fullmatch(request_id):
            request_id = new_id()
        scope[REQUEST_ID_KEY] = request_id
        echoed = (REQUEST_ID_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class AccessLogMiddleware:
    """One ``folio.access`` line per request, with its status and duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # A JSON log line costs about as much as the rest of a request, and the services
            # already log every RPC under the same request id: successes only at DEBUG.
            level = logging.INFO if status >= HTTPStatus.BAD_REQUEST else logging.DEBUG
            if access_log.isEnabledFor(level):
                access_log.log(
                    level,
                    "http",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )


class ErrorMiddleware:
    """Answers an HttpError with its AIP-193 JSON and anything unexpected with a logged 500.

    Once a response has started (a stream), nothing more can be said in HTTP terms; a
    client that left before its request was read gets no answer at all.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except HttpError as error:
            if not started:
                await error_response(error)(scope, receive, send)
        except ClientGone:
            pass
        except Exception:
            log.exception("unhandled error for %s %s", scope["method"], scope["path"])
            if not started:
                internal = HttpError(grpc.StatusCode.INTERNAL, "Internal error.", reason="INTERNAL")
                await error_response(internal)(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``, whether declared or streamed (chunked).

    The limit is checked when the app reads the body, not when the request arrives, so a
    request refused for another reason first (401, 404) gets that answer as before.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [value for key, value in scope["headers"] if key == b"content-length"]
        seen = 0
        first = True

        async def receive_limited() -> Message:
            nonlocal seen, first
            if first:
                first = False
                self._check_declared(declared)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise body_too_large(self.max_bytes)
            return message

        await self.app(scope, receive_limited, send)

    def _check_declared(self, declared: list[bytes]) -> None:
        """Refuse a Content-Length over the limit before reading a byte of the body."""
        if not declared:
            return
        length = b", ".join(declared).decode("latin-1")
        if not length.isdigit():
            raise bad_request("Bad Content-Length.", [("Content-Length", "not a number")])
        if int(length) > self.max_bytes:
            raise body_too_large(self.max_bytes)


# Streams are never compressed: each event must reach the client as it is sent, and a
# flush per small event would cost more bytes and CPU than compression saves.
UNCOMPRESSED_TYPES = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/x-ndjson")


def gzip_middleware(app: ASGIApp, settings: GatewaySettings) -> ASGIApp:
    """``app`` behind Starlette's gzip for clients that accept it, unless turned off."""
    if settings.gateway_gzip_level == 0:
        return app
    return GZipMiddleware(
        app,
        minimum_size=settings.gateway_gzip_min_bytes,
        compresslevel=settings.gateway_gzip_level,
        exclude_content_types=UNCOMPRESSED_TYPES,
    )


class ConditionalGetMiddleware:
    """304 without a body for a GET or HEAD whose If-None-Match names the 200's ETag."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        conditions = [value for key, value in scope["headers"] if key == b"if-none-match"]
        if not conditions:
            await self.app(scope, receive, send)
            return
        condition = b", ".join(conditions).decode("latin-1")
        not_modified = False

        async def send_conditionally(message: Message) -> None:
            nonlocal not_modified
            if message["type"] == "http.response.start" and message["status"] == HTTPStatus.OK:
                headers = message.get("headers", ())
                etag = next((v for k, v in headers if k == b"etag"), None)
                if etag is not None and none_match(condition, etag):
                    not_modified = True
                    kept = [(k, v) for k, v in headers if k in NOT_MODIFIED_HEADERS]
                    message = {**message, "status": HTTPStatus.NOT_MODIFIED, "headers": kept}
            elif not_modified and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, receive, send_conditionally)
