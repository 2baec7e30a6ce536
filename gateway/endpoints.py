"""The gateway's own endpoints: /healthz, /readyz, /openapi.json and the /docs UI."""

import json
from http import HTTPStatus

import grpc

from gateway import docs
from gateway.errors import HttpError, not_found
from gateway.openapi import build_openapi, downgrade_to_30
from gateway.requests import Request
from gateway.responses import Response, json_response
from gateway.router import Endpoint
from gateway.routes import RouteTable
from gateway.transcode import encode
from gateway.upstreams import Upstreams

HTML_TYPE = b"text/html; charset=utf-8"
JS_TYPE = b"text/javascript; charset=utf-8"
ASSET_CACHING = (b"cache-control", b"public, max-age=86400")


class GatewayEndpoints:
    """Liveness, readiness against the upstreams' gRPC health, and the live API docs."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    def by_path(self) -> dict[str, Endpoint]:
        """The endpoints served at exactly these paths."""
        return {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/openapi.json": self.openapi,
            "/docs": self.docs_page,
            "/docs/": self.docs_page,
            "/docs/init.js": self.docs_init,
            docs.DOCS_SPEC_PATH: self.docs_openapi,
        }

    def by_prefix(self) -> dict[str, Endpoint]:
        """The endpoints serving every path under these prefixes."""
        return {"/docs/": self.docs_asset}

    async def healthz(self, request: Request) -> Response:
        """The gateway process is up; says nothing about the upstreams."""
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """200 when every upstream's gRPC health is SERVING, else 503 naming the others."""
        states = await self.upstreams.health()
        bad = {name: state for name, state in states.items() if state != "SERVING"}
        if bad:
            raise HttpError(
                grpc.StatusCode.UNAVAILABLE,
                "Upstreams not serving: " + ", ".join(sorted(bad)),
                reason="UPSTREAMS_NOT_SERVING",
                metadata=bad,
            )
        return json_response({"status": "ready", "upstreams": states})

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI 3.1 document of the routes served right now."""
        return Response(HTTPStatus.OK, openapi_json(self.upstreams.table))

    async def docs_page(self, request: Request) -> Response:
        return Response(HTTPStatus.OK, docs.PAGE, HTML_TYPE)

    async def docs_init(self, request: Request) -> Response:
        return Response(HTTPStatus.OK, docs.INIT_JS, JS_TYPE)

    async def docs_openapi(self, request: Request) -> Response:
        """The same document as OpenAPI 3.0, which the bundled Swagger UI reads."""
        table = self.upstreams.table
        if table.docs_openapi_cache is None:
            table.docs_openapi_cache = encode(downgrade_to_30(json.loads(openapi_json(table))))
        return Response(HTTPStatus.OK, table.docs_openapi_cache)

    async def docs_asset(self, request: Request) -> Response:
        """A file of the bundled Swagger UI, by name only (no paths, so no traversal)."""
        found = docs.asset(request.path.removeprefix("/docs/"))
        if found is None:
            raise not_found()
        content, media_type = found
        return Response(HTTPStatus.OK, content, media_type.encode(), headers=[ASSET_CACHING])


def openapi_json(table: RouteTable) -> bytes:
    """The encoded OpenAPI document of ``table``, built once per table."""
    # The table is replaced whenever an upstream changes, and the cache with it.
    if table.openapi_cache is None:
        table.openapi_cache = encode(build_openapi(table))
    return table.openapi_cache
