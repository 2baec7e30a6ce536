"""The ASGI application: REST in, gRPC out, with nothing domain-specific in between."""

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

import grpc

from gateway import docs
from gateway.auth import EdgeAuth
from gateway.config import GatewaySettings
from gateway.errors import HttpError, bad_request, from_rpc_error
from gateway.openapi import build_openapi, downgrade_to_30
from gateway.reflection import EOF
from gateway.routes import Access, Match, Route, RouteTable
from gateway.transcode import build_request, encode, response_json
from gateway.upstreams import Upstreams
from libs.ids import new_id
from libs.logs import request_id_var

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger(__name__)
access_log = logging.getLogger("folio.access")

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_JSON_MEDIA = re.compile(r"^\s*application/([\w.+-]+\+)?json\s*(;.*)?$", re.IGNORECASE)
JSON_TYPE = b"application/json"
SSE_TYPE = b"text/event-stream; charset=utf-8"
NDJSON_TYPE = b"application/x-ndjson"
NO_STORE = (b"cache-control", b"no-store")
GATEWAY_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/"})


class ClientGone(Exception):
    """The client disconnected before its request was read; nobody is left to answer."""


class Exchange:
    """One HTTP request/response on the ASGI connection."""

    __slots__ = ("receive", "request_id", "scope", "send", "started", "status")

    def __init__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.request_id = request_id
        self.started = False
        self.status = 0

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the status line and headers (plus X-Request-ID)."""
        self.started = True
        self.status = status
        headers.append((b"x-request-id", self.request_id.encode()))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, body: bytes, more: bool) -> None:
        """Send part of the body; uvicorn writes it to the socket at once."""
        await self.send({"type": "http.response.body", "body": body, "more_body": more})

    async def respond(
        self,
        status: int,
        body: bytes,
        media_type: bytes = JSON_TYPE,
        extra: Any = (),
        cache_control: bytes | None = None,
    ) -> None:
        """A whole response; an empty body (204) carries no content headers."""
        length = (b"content-length", str(len(body)).encode())
        caching = (b"cache-control", cache_control) if cache_control else NO_STORE
        headers = [(b"content-type", media_type), length, caching, *extra] if body else [*extra]
        await self.start(status, headers)
        await self.chunk(body, False)

    async def error(self, error: HttpError) -> None:
        """The AIP-193 JSON of ``error`` with its status and headers."""
        await self.respond(error.http_status, error.body(), extra=error.headers)


def _cache_control(trailers: Any) -> bytes | None:
    """The one response header an upstream may set: its Cache-Control (e.g. for JWKS)."""
    for key, value in trailers or ():
        if key == "cache-control" and isinstance(value, str) and _printable(value):
            return value.encode("latin-1")
    return None


def _not_found() -> HttpError:
    return HttpError(grpc.StatusCode.NOT_FOUND, "No route matches this path.", reason="NO_ROUTE")


def _method_not_allowed(allowed: list[str]) -> HttpError:
    return HttpError(
        grpc.StatusCode.UNIMPLEMENTED,
        "This path does not accept this method.",
        reason="METHOD_NOT_ALLOWED",
        metadata={"allow": ", ".join(allowed)},
        status=HTTPStatus.METHOD_NOT_ALLOWED,
        headers=[(b"allow", ", ".join(allowed).encode())],
    )


class GatewayApp:
    """REST -> gRPC transcoder over the routes the upstreams' reflection describes."""

    def __init__(self, settings: GatewaySettings, auth: EdgeAuth) -> None:
        self.settings = settings
        self.auth = auth
        self.upstreams = Upstreams(settings)
        self.max_body = settings.gateway_max_body_bytes
        self.max_depth = settings.gateway_max_json_depth
        self.deadline_header = settings.gateway_deadline_header.lower().encode()
        self.max_deadline = settings.gateway_max_deadline_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.upstreams.start()
                except Exception as error:
                    log.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstreams.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        if request_id is None or not _VALID_REQUEST_ID.fullmatch(request_id):
            request_id = new_id()
        token = request_id_var.set(request_id)
        exchange = Exchange(scope, receive, send, request_id)
        try:
            await self._dispatch(exchange)
        except HttpError as error:
            if not exchange.started:
                await exchange.error(error)
        except ClientGone:
            pass
        except Exception:
            log.exception("unhandled error for %s %s", scope["method"], scope["path"])
            if not exchange.started:
                await exchange.error(
                    HttpError(grpc.StatusCode.INTERNAL, "Internal error.", reason="INTERNAL")
                )
        finally:
            # A JSON log line costs about as much as the rest of a request, and the services
            # already log every RPC under the same request id: successes only at DEBUG.
            level = logging.INFO if exchange.status >= HTTPStatus.BAD_REQUEST else logging.DEBUG
            if access_log.isEnabledFor(level):
                access_log.log(
                    level,
                    "http",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": exchange.status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
            request_id_var.reset(token)

    async def _dispatch(self, exchange: Exchange) -> None:
        scope = exchange.scope
        method: str = scope["method"]
        path: str = scope["path"]
        if path in GATEWAY_PATHS or path.startswith("/docs/"):
            await self._gateway_endpoint(exchange, method, path)
            return
        raw_path = scope.get("raw_path")
        raw = raw_path.decode("latin-1") if raw_path else path
        table = self.upstreams.table
        match = _find(table, method, raw)
        if match is None:
            allowed = table.allowed_methods(raw)
            if not allowed and "%2f" in raw.lower():
                allowed = table.allowed_methods(_slashes(raw))
            raise _method_not_allowed(allowed) if allowed else _not_found()
        route = match.route
        headers = _headers(scope)
        if route.access != Access.PUBLIC:
            await self.auth.check(headers.get(b"authorization"))
        body = await self._read_body(exchange, headers)
        if body and not _JSON_MEDIA.match(headers.get(b"content-type") or "application/json"):
            raise HttpError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "The request body must be JSON (Content-Type: application/json).",
                reason="UNSUPPORTED_MEDIA_TYPE",
                status=HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            )
        query = scope.get("query_string", b"").decode("latin-1")
        request = build_request(route, match.path_values, query, body, self.max_depth)
        timeout = self._timeout(route, headers)
        metadata = self._metadata(exchange, headers)
        if route.server_streaming:
            accept = headers.get(b"accept") or ""
            await self._stream(
                exchange, route, request, timeout, metadata, "text/event-stream" in accept
            )
            return
        try:
            call = route.call(request, timeout=timeout, metadata=metadata)
            response = await call
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError as error:
            raise self._upstream_error(route, error) from None
        if route.success == HTTPStatus.NO_CONTENT:
            await exchange.respond(route.success, b"")
        else:
            await exchange.respond(
                route.success,
                encode(response_json(route, response)),
                cache_control=_cache_control(trailers),
            )

    def _upstream_error(self, route: Route, error: grpc.aio.AioRpcError) -> HttpError:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            # The upstream no longer has this method: re-read its descriptors now.
            self.upstreams.request_refresh(route.upstream)
        return from_rpc_error(error, upstream=route.upstream, pool=route.pool)

    async def _read_body(self, exchange: Exchange, headers: dict[bytes, str]) -> bytes:
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise bad_request("Bad Content-Length.", [("Content-Length", "not a number")])
            if int(length) > self.max_body:
                raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await exchange.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise self._too_large()
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> HttpError:
        return HttpError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"The request body is larger than {self.max_body} bytes.",
            reason="BODY_TOO_LARGE",
            metadata={"max_bytes": str(self.max_body)},
            status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )

    def _timeout(self, route: Route, headers: dict[bytes, str]) -> float:
        if route.server_streaming:
            default = self.settings.gateway_stream_deadline_seconds
        else:
            default = self.settings.default_deadline_seconds
        asked = headers.get(self.deadline_header)
        if asked is None:
            return min(default, self.max_deadline)
        try:
            seconds = float(asked)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            name = self.settings.gateway_deadline_header
            raise bad_request(
                f"{name} must be a positive number of seconds.", [(name, "not a positive number")]
            )
        return min(seconds, self.max_deadline)

    def _metadata(self, exchange: Exchange, headers: dict[bytes, str]) -> list[tuple[str, str]]:
        """The only request headers upstreams see: never blanket-copied, so none is spoofed."""
        metadata = [("x-request-id", exchange.request_id)]
        authorization = _printable(headers.get(b"authorization"))
        if authorization:
            metadata.append(("authorization", authorization))
        client = exchange.scope.get("client")
        if client:
            forwarded = _printable(headers.get(b"x-forwarded-for"))
            host = str(client[0])
            metadata.append(("x-forwarded-for", f"{forwarded}, {host}" if forwarded else host))
        return metadata

    async def _stream(
        self,
        exchange: Exchange,
        route: Route,
        request: Any,
        deadline: float,
        metadata: list[tuple[str, str]],
        sse: bool,
    ) -> None:
        """Relay a server stream as SSE or NDJSON; a client disconnect cancels the RPC."""
        call = route.call(request, timeout=deadline, metadata=metadata)
        gone = asyncio.ensure_future(_wait_for_disconnect(exchange.receive))
        gone.add_done_callback(lambda _: call.cancel())
        try:
            try:
                item = await call.read()
            except grpc.aio.AioRpcError as error:
                # Nothing sent yet, so the failure still gets its proper HTTP status.
                raise self._upstream_error(route, error) from None
            headers = [
                (b"content-type", SSE_TYPE if sse else NDJSON_TYPE),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ]
            await exchange.start(route.success, headers)
            heartbeat = self.settings.gateway_sse_heartbeat_seconds if sse else 0.0
            while item is not EOF:
                payload = encode(response_json(route, item))
                await exchange.chunk(
                    b"data: " + payload + b"\n\n" if sse else payload + b"\n", True
                )
                item = await _next_message(call, exchange, heartbeat)
            await exchange.chunk(b"", False)
        except grpc.aio.AioRpcError as error:
            failure = self._upstream_error(route, error).body()
            frame = b"event: error\ndata: " + failure + b"\n\n" if sse else failure + b"\n"
            await exchange.chunk(frame, False)
        except (asyncio.CancelledError, OSError):
            if not gone.done():
                raise
            log.info("client disconnected; cancelled %s", route.full_method)
        finally:
            gone.cancel()
            call.cancel()

    async def _gateway_endpoint(self, exchange: Exchange, method: str, path: str) -> None:
        if method not in ("GET", "HEAD"):
            raise _method_not_allowed(["GET"])
        table = self.upstreams.table
        if path == "/healthz":
            await exchange.respond(HTTPStatus.OK, encode({"status": "ok"}))
        elif path == "/readyz":
            states = await self.upstreams.health()
            bad = {name: state for name, state in states.items() if state != "SERVING"}
            if bad:
                raise HttpError(
                    grpc.StatusCode.UNAVAILABLE,
                    "Upstreams not serving: " + ", ".join(sorted(bad)),
                    reason="UPSTREAMS_NOT_SERVING",
                    metadata=bad,
                )
            await exchange.respond(HTTPStatus.OK, encode({"status": "ready", "upstreams": states}))
        elif path == "/openapi.json":
            await exchange.respond(HTTPStatus.OK, _openapi(table))
        elif path in ("/docs", "/docs/"):
            await exchange.respond(HTTPStatus.OK, docs.PAGE, b"text/html; charset=utf-8")
        elif path == "/docs/init.js":
            await exchange.respond(HTTPStatus.OK, docs.INIT_JS, b"text/javascript; charset=utf-8")
        elif path == docs.DOCS_SPEC_PATH:
            if table.docs_openapi_cache is None:
                table.docs_openapi_cache = encode(downgrade_to_30(json.loads(_openapi(table))))
            await exchange.respond(HTTPStatus.OK, table.docs_openapi_cache)
        else:
            found = docs.asset(path.removeprefix("/docs/"))
            if found is None:
                raise _not_found()
            content, media_type = found
            await exchange.respond(
                HTTPStatus.OK,
                content,
                media_type.encode(),
                extra=[(b"cache-control", b"public, max-age=86400")],
            )


def _openapi(table: RouteTable) -> bytes:
    # Built once per route table: the table is replaced whenever an upstream changes.
    if table.openapi_cache is None:
        table.openapi_cache = encode(build_openapi(table))
    return table.openapi_cache


def _slashes(raw: str) -> str:
    return raw.replace("%2F", "/").replace("%2f", "/")


def _find(table: RouteTable, method: str, raw: str) -> Match | None:
    match = table.match(method, raw)
    if match is None and "%2f" in raw.lower():
        # OpenAPI clients must percent-encode the slashes of multi-segment variables.
        match = table.match(method, _slashes(raw))
    return match


def _printable(value: str | None) -> str | None:
    """``value`` if gRPC can carry it as ASCII metadata; HTTP allows bytes gRPC refuses."""
    if value is None or not _PRINTABLE.fullmatch(value):
        return None
    return value


def _headers(scope: Scope) -> dict[bytes, str]:
    """Request headers by lower-case name; repeated ones joined with commas (RFC 9110)."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        text = value.decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text
    return found


async def _next_message(call: Any, exchange: Exchange, heartbeat: float) -> Any:
    """The stream's next message; SSE comments keep idle proxies from closing the stream."""
    if heartbeat <= 0:
        return await call.read()
    read = asyncio.ensure_future(call.read())
    try:
        while True:
            done, _ = await asyncio.wait((read,), timeout=heartbeat)
            if done:
                return read.result()
            await exchange.chunk(b": keep-alive\n\n", True)
    finally:
        read.cancel()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
