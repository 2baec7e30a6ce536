"""The ASGI interface the gateway's parts are written against."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Header = tuple[bytes, bytes]

# Where RequestIdMiddleware leaves the request id for endpoints (ASGI allows own scope keys).
REQUEST_ID_KEY = "folio.request_id"
