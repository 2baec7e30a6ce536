"""CORS for web apps on other origins: Starlette's middleware, configured from the settings.

Starlette matches origins and builds the headers. Folio changes two of its answers so a
disallowed origin learns nothing and loses nothing: every preflight is answered 204 here
(it never reaches the app, so it needs no token and calls no upstream), with the whole
policy for an allowed origin and no CORS header for any other; and an actual request from
a disallowed origin gets its real answer without CORS headers, which the browser then
keeps from the page.
"""

from http import HTTPStatus

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import cors
from starlette.responses import Response

from gateway.asgi import ASGIApp, Message, Send
from gateway.config import GatewaySettings


class CORSMiddleware(cors.CORSMiddleware):
    """Starlette's CORSMiddleware, silent towards origins it does not allow."""

    def preflight_response(self, request_headers: Headers) -> Response:
        """204 with the policy for an allowed origin; the browser names what it refuses.

        Starlette answers a refused method or header 400 in plain text; the policy alone
        lets the browser say which header or method was refused, and keeps every error
        body the gateway sends in the AIP-193 shape.
        """
        headers = {"Vary": self.preflight_headers["Vary"]}
        origin = request_headers["origin"]
        if self.is_allowed_origin(origin):
            headers.update(self.preflight_headers)
            if self.preflight_explicit_allow_origin:
                headers["Access-Control-Allow-Origin"] = origin
        return Response(status_code=HTTPStatus.NO_CONTENT, headers=headers)

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        """CORS headers for an allowed origin; for another, only ``Vary: Origin``."""
        origin = request_headers.get("origin")
        if origin is None or self.is_allowed_origin(origin):
            await super().send(message, send, request_headers)
            return
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            MutableHeaders(scope=message).add_vary_header("Origin")
        await send(message)


def cors_middleware(app: ASGIApp, settings: GatewaySettings) -> ASGIApp:
    """``app`` behind the configured CORS policy, or ``app`` itself when CORS is off."""
    if not settings.cors_enabled:
        return app
    return CORSMiddleware(
        app,
        allow_origins=settings.gateway_cors_origins,
        allow_origin_regex=settings.cors_origin_regex(),
        allow_methods=settings.gateway_cors_methods,
        allow_headers=settings.gateway_cors_headers,
        expose_headers=settings.gateway_cors_expose_headers,
        max_age=settings.gateway_cors_max_age_seconds,
    )
