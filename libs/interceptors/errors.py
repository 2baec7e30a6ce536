"""Turns domain exceptions into gRPC status with google.rpc ErrorInfo (AIP-193)."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs.errors import FolioError, InvalidArgument
from libs.interceptors.base import AroundInterceptor

log = logging.getLogger(__name__)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: FolioError, domain: str) -> grpc.Status:
    """The rich gRPC status for a domain error: one ErrorInfo, plus BadRequest if any."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
        )
    ]
    if isinstance(error, InvalidArgument) and error.field_violations:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in error.field_violations.items()
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


class ErrorInterceptor(AroundInterceptor):
    """Maps FolioError to its status; anything unexpected becomes a logged INTERNAL."""

    def __init__(self, service: str) -> None:
        self.domain = f"{service}.folio"

    @asynccontextmanager
    async def around(
        self, context: grpc.aio.ServicerContext[Any, Any], method_name: str
    ) -> AsyncIterator[None]:
        try:
            yield
        except FolioError as error:
            await context.abort_with_status(to_status(error, self.domain))  # type: ignore[attr-defined]
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method_name)
            internal = status_pb2.Status(
                code=code_pb2.INTERNAL,
                message="internal error",
                details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=self.domain))],
            )
            await context.abort_with_status(rpc_status.to_status(internal))  # type: ignore[attr-defined]
