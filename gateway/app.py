"""The ASGI application: REST in, gRPC out, with nothing domain-specific in between.

Requests pass the middleware (request id, access log, CORS, compression, errors, conditional
GET, body limit), then the router picks a gateway endpoint or an upstream route, whose
endpoint returns the response.
"""

import logging

from gateway.asgi import ASGIApp, Receive, Scope, Send
from gateway.auth import EdgeAuth
from gateway.config import GatewaySettings
from gateway.cors import cors_middleware
from gateway.endpoints import GatewayEndpoints
from gateway.errors import method_not_allowed, not_found
from gateway.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    ConditionalGetMiddleware,
    ErrorMiddleware,
    RequestIdMiddleware,
    gzip_middleware,
)
from gateway.proxy import Proxy
from gateway.requests import Request
from gateway.router import Router
from gateway.routes import RouteTable
from gateway.upstreams import Upstreams

log = logging.getLogger(__name__)


class GatewayApp:
    """REST -> gRPC transcoder over the routes the upstreams' reflection describes."""

    def __init__(self, settings: GatewaySettings, auth: EdgeAuth) -> None:
        self.settings = settings
        self.upstreams = Upstreams(settings)
        endpoints = GatewayEndpoints(self.upstreams)
        self.router = Router(endpoints.by_path(), endpoints.by_prefix(), self._table)
        self.proxy = Proxy(settings, auth, self.upstreams)
        self.http = self._middleware(self.dispatch)

    def _middleware(self, app: ASGIApp) -> ASGIApp:
        """``app`` inside the middleware stack; the last one wrapped runs first."""
        settings = self.settings
        app = BodyLimitMiddleware(app, max_bytes=settings.gateway_max_body_bytes)
        # Inside compression, so a body a 304 drops is never compressed first.
        app = ConditionalGetMiddleware(app)
        app = ErrorMiddleware(app)
        # Outside the errors, so error bodies are compressed and readable cross-origin too;
        # CORS outside compression answers preflights before anything else runs.
        app = gzip_middleware(app, settings)
        app = cors_middleware(app, settings)
        app = AccessLogMiddleware(app)
        return RequestIdMiddleware(app)

    def _table(self) -> RouteTable:
        return self.upstreams.table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route the request, let its endpoint build the response, and send it."""
        request = Request(scope, receive)
        routed = self.router.match(request.method, request.path, request.raw_path)
        if routed.upstream is not None:
            response = await self.proxy(request, routed.upstream)
        elif routed.endpoint is not None:
            response = await routed.endpoint(request)
        elif routed.allowed:
            raise method_not_allowed(routed.allowed)
        else:
            raise not_found()
        await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Discover the upstreams at start-up; close their channels at shutdown."""
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
