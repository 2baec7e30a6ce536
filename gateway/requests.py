"""The request type endpoints read: the scope's fields, and the body on demand."""

from gateway.asgi import REQUEST_ID_KEY, Receive, Scope


class ClientGone(Exception):
    """The client disconnected before its request was read; nobody is left to answer."""


class Request:
    """One HTTP request on an ASGI connection."""

    __slots__ = ("_headers", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self._headers: dict[bytes, str] | None = None

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def path(self) -> str:
        path: str = self.scope["path"]
        return path

    @property
    def raw_path(self) -> str:
        """The path as sent, still percent-encoded: path templates match on it."""
        raw: bytes | None = self.scope.get("raw_path")
        return raw.decode("latin-1") if raw else self.path

    @property
    def query_string(self) -> str:
        query: bytes = self.scope.get("query_string", b"")
        return query.decode("latin-1")

    @property
    def client_host(self) -> str | None:
        client = self.scope.get("client")
        return str(client[0]) if client else None

    @property
    def request_id(self) -> str:
        request_id: str = self.scope[REQUEST_ID_KEY]
        return request_id

    @property
    def headers(self) -> dict[bytes, str]:
        """Headers by lower-case name; repeated ones joined with commas (RFC 9110)."""
        if self._headers is None:
            self._headers = joined_headers(self.scope)
        return self._headers

    async def body(self) -> bytes:
        """The whole body; its size limit is enforced by the middleware around the app."""
        chunks: list[bytes] = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def joined_headers(scope: Scope) -> dict[bytes, str]:
    """Request headers by lower-case name; repeated ones joined with commas (RFC 9110)."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        text = value.decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text
    return found
