"""Turns domain exceptions into gRPC status with google.rpc ErrorInfo (AIP-193)."""

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs.errors import FolioError, InvalidArgument


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


def internal_status(domain: str) -> grpc.Status:
    """What a caller sees of an unexpected error: INTERNAL, and nothing of its cause."""
    internal = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message="internal error",
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=domain))],
    )
    return rpc_status.to_status(internal)
