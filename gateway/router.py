"""The router: which endpoint serves a method and path. It matches; it does nothing else."""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.asgi import ASGIApp
from gateway.requests import Request
from gateway.routes import Match, RouteTable

# An endpoint turns a request into the response (an ASGI app) that answers it.
Endpoint = Callable[[Request], Awaitable[ASGIApp]]
# The gateway's own endpoints are read-only; HEAD is answered like GET, as on every route.
GATEWAY_METHODS = ("GET", "HEAD")
GATEWAY_ALLOW = ("GET",)


@dataclass(frozen=True, slots=True)
class Routed:
    """The outcome of matching: a gateway endpoint, an upstream route, or neither.

    With neither, ``allowed`` lists the methods the path does accept (405), or none (404).
    """

    endpoint: Endpoint | None = None
    upstream: Match | None = None
    allowed: tuple[str, ...] = ()


NO_ROUTE = Routed()


class Router:
    """Gateway endpoints by exact path or path prefix, then the upstreams' route table."""

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        prefixes: Mapping[str, Endpoint],
        table: Callable[[], RouteTable],
    ) -> None:
        self.endpoints = dict(endpoints)
        self.prefixes = tuple(prefixes.items())
        # Read on every request: the table is swapped whenever an upstream's API changes.
        self.table = table

    def match(self, method: str, path: str, raw_path: str) -> Routed:
        """What serves ``method`` on ``path`` (``raw_path`` is the same, still encoded)."""
        endpoint = self.endpoints.get(path) or self._by_prefix(path)
        if endpoint is not None:
            if method in GATEWAY_METHODS:
                return Routed(endpoint=endpoint)
            return Routed(allowed=GATEWAY_ALLOW)
        table = self.table()
        # HEAD is GET without the body (RFC 9110 9.3.2), so every GET route answers it.
        method = "GET" if method == "HEAD" else method
        found = table.match(method, raw_path)
        if found is None and _has_encoded_slash(raw_path):
            # OpenAPI clients must percent-encode the slashes of multi-segment variables.
            found = table.match(method, _slashes(raw_path))
        if found is not None:
            return Routed(upstream=found)
        allowed = table.allowed_methods(raw_path)
        if not allowed and _has_encoded_slash(raw_path):
            allowed = table.allowed_methods(_slashes(raw_path))
        return Routed(allowed=tuple(allowed)) if allowed else NO_ROUTE

    def _by_prefix(self, path: str) -> Endpoint | None:
        for prefix, endpoint in self.prefixes:
            if path.startswith(prefix):
                return endpoint
        return None


def _has_encoded_slash(raw: str) -> bool:
    return "%2f" in raw.lower()


def _slashes(raw: str) -> str:
    return raw.replace("%2F", "/").replace("%2f", "/")
