"""The endpoint behind every upstream route: an HTTP request in, one gRPC call, its answer out."""

import math
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import grpc

from gateway.asgi import ASGIApp
from gateway.auth import EdgeAuth
from gateway.config import GatewaySettings
from gateway.errors import HttpError, bad_request, from_rpc_error
from gateway.etags import apply_if_match, etag_header
from gateway.requests import Request
from gateway.responses import NO_STORE, Response
from gateway.routes import Access, Match, Route
from gateway.streaming import StreamResponse
from gateway.transcode import build_request, encode, response_json
from gateway.upstreams import Upstreams

_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# Methods that change nothing, so If-Match has nothing to guard on them.
SAFE_METHODS = frozenset({"GET", "HEAD"})
_JSON_MEDIA = re.compile(r"^\s*application/([\w.+-]+\+)?json\s*(;.*)?$", re.IGNORECASE)


class Proxy:
    """Transcodes a matched route: edge auth, JSON -> request message, the call, JSON back."""

    def __init__(self, settings: GatewaySettings, auth: EdgeAuth, upstreams: Upstreams) -> None:
        self.settings = settings
        self.auth = auth
        self.upstreams = upstreams
        self.max_depth = settings.gateway_max_json_depth
        self.deadline_header = settings.gateway_deadline_header.lower().encode()
        self.max_deadline = settings.gateway_max_deadline_seconds

    async def __call__(self, request: Request, match: Match) -> ASGIApp:
        route = match.route
        headers = request.headers
        if route.access != Access.PUBLIC:
            await self.auth.check(headers.get(b"authorization"))
        body = await request.body()
        if body and not _JSON_MEDIA.match(headers.get(b"content-type") or "application/json"):
            raise HttpError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "The request body must be JSON (Content-Type: application/json).",
                reason="UNSUPPORTED_MEDIA_TYPE",
                status=HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            )
        message = build_request(
            route, match.path_values, request.query_string, body, self.max_depth
        )
        if_match = headers.get(b"if-match")
        if if_match is not None and request.method not in SAFE_METHODS:
            apply_if_match(route, message, if_match)
        timeout = self._timeout(route, headers)
        metadata = self._metadata(request)
        if route.server_streaming:
            return StreamResponse(
                route,
                message,
                timeout=timeout,
                metadata=metadata,
                sse="text/event-stream" in (headers.get(b"accept") or ""),
                heartbeat=self.settings.gateway_sse_heartbeat_seconds,
                upstream_error=lambda error: self.upstream_error(route, error),
            )
        try:
            call = route.call(message, timeout=timeout, metadata=metadata)
            response = await call
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError as error:
            raise self.upstream_error(route, error) from None
        if route.success == HTTPStatus.NO_CONTENT:
            return Response(route.success)
        value = response_json(route, response)
        return Response(
            route.success,
            encode(value),
            headers=etag_header(value),
            cache_control=_cache_control(trailers) or NO_STORE,
        )

    def upstream_error(self, route: Route, error: grpc.aio.AioRpcError) -> HttpError:
        """The HTTP error of an upstream's gRPC error."""
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            # The upstream no longer has this method: re-read its descriptors now.
            self.upstreams.request_refresh(route.upstream)
        return from_rpc_error(error, upstream=route.upstream, pool=route.pool)

    def _timeout(self, route: Route, headers: dict[bytes, str]) -> float:
        """The call's deadline: the client's (header) if valid, capped; else the default."""
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

    def _metadata(self, request: Request) -> list[tuple[str, str]]:
        """The only request headers upstreams see: never blanket-copied, so none is spoofed."""
        headers = request.headers
        metadata = [("x-request-id", request.request_id)]
        authorization = _printable(headers.get(b"authorization"))
        if authorization:
            metadata.append(("authorization", authorization))
        host = request.client_host
        if host is not None:
            forwarded = _printable(headers.get(b"x-forwarded-for"))
            metadata.append(("x-forwarded-for", f"{forwarded}, {host}" if forwarded else host))
        return metadata


def _cache_control(trailers: Sequence[tuple[str, Any]] | None) -> bytes | None:
    """The one response header an upstream may set: its Cache-Control (e.g. for JWKS)."""
    for key, value in trailers or ():
        if key == "cache-control" and isinstance(value, str) and _printable(value):
            return value.encode("latin-1")
    return None


def _printable(value: str | None) -> str | None:
    """``value`` if gRPC can carry it as ASCII metadata; HTTP allows bytes gRPC refuses."""
    if value is None or not _PRINTABLE.fullmatch(value):
        return None
    return value
