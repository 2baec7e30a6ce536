"""Channels to other Folio services: default deadline, retry on UNAVAILABLE, metadata."""

import json
from typing import Any

import grpc

from libs.access import principal_var
from libs.config import Settings
from libs.interceptors.access import ON_BEHALF_OF_KEY
from libs.interceptors.request_context import REQUEST_ID_KEY
from libs.logs import request_id_var
from libs.tokens import ServiceTokenCache

# gRPC's own retry machinery, so a restarting peer costs a short delay rather than an error.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class _OutgoingMetadata:
    """Adds the service token, request id and acting user, and a default deadline."""

    def __init__(self, callee: str, tokens: ServiceTokenCache, deadline: float) -> None:
        self.callee = callee
        self.tokens = tokens
        self.deadline = deadline

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["authorization"] = f"Bearer {self.tokens.token_for(self.callee)}"
        request_id = request_id_var.get()
        if request_id and REQUEST_ID_KEY not in metadata:
            metadata[REQUEST_ID_KEY] = request_id
        user_id = principal_var.get().user_id
        if user_id and ON_BEHALF_OF_KEY not in metadata:
            metadata[ON_BEHALF_OF_KEY] = user_id
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else self.deadline,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call type it implements only, so unary and
# server-streaming calls each get an interceptor of their own.
class _UnaryOutgoing(_OutgoingMetadata, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamOutgoing(_OutgoingMetadata, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def service_channel(
    callee: str, *, caller: str, settings: Settings, internal_token_key: str
) -> grpc.aio.Channel:
    """A channel from ``caller`` to ``callee`` that authenticates as ``caller``."""
    tokens = ServiceTokenCache(internal_token_key, caller)
    return grpc.aio.insecure_channel(
        settings.address(callee),
        options=[("grpc.enable_retries", 1), ("grpc.service_config", RETRY_SERVICE_CONFIG)],
        interceptors=[
            _UnaryOutgoing(callee, tokens, settings.default_deadline_seconds),  # type: ignore[list-item]
            _StreamOutgoing(callee, tokens, settings.default_deadline_seconds),  # type: ignore[list-item]
        ],
    )
