"""Errors as REST clients see them: AIP-193 JSON with the HTTP status of the gRPC code."""

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import grpc
from google.protobuf import any_pb2, descriptor_pool, json_format
from google.rpc import error_details_pb2, status_pb2

log = logging.getLogger(__name__)

DOMAIN = "gateway.folio"
# nginx's "client closed request"; there is no HTTPStatus member for it.
CLIENT_CLOSED_REQUEST = 499
STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
PREMIUM_REQUIRED = "PREMIUM_REQUIRED"
BEARER_CHALLENGE = 'Bearer error="invalid_token"'

# The grpc-gateway / google.rpc.Code HTTP mapping (reference table (b)).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: HTTPStatus.OK,
    grpc.StatusCode.CANCELLED: CLIENT_CLOSED_REQUEST,
    grpc.StatusCode.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    # Deliberately not 412: clients read 412 as an ETag mismatch.
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
}
CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}

# Messages grpc itself writes (addresses, socket errors) are for our logs, not for clients.
GENERIC_MESSAGES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "The service is unavailable; try again shortly.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "The request took longer than its deadline.",
    grpc.StatusCode.UNKNOWN: "Internal error.",
    grpc.StatusCode.INTERNAL: "Internal error.",
    grpc.StatusCode.DATA_LOSS: "Internal error.",
    grpc.StatusCode.CANCELLED: "The request was cancelled.",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "Too many requests or too large a message.",
    grpc.StatusCode.UNIMPLEMENTED: "The method is not implemented.",
}


@dataclass
class HttpError(Exception):
    """An error the gateway answers with; ``body()`` is the AIP-193 JSON."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = DOMAIN
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[tuple[str, str]] = ()
    # Details beyond the ErrorInfo and BadRequest built here, already as JSON objects.
    extra_details: Sequence[dict[str, Any]] = ()
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.reason:
            self.reason = self.code.name
        if self.status is None:
            self.status = HTTP_STATUS.get(self.code, HTTPStatus.INTERNAL_SERVER_ERROR)
        if self.status == HTTPStatus.UNAUTHORIZED and not any(
            k == b"www-authenticate" for k, _ in self.headers
        ):
            self.headers.append((b"www-authenticate", BEARER_CHALLENGE.encode()))

    @property
    def http_status(self) -> int:
        assert self.status is not None
        return self.status

    def document(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` object."""
        details: list[dict[str, Any]] = [
            {
                "@type": ERROR_INFO_TYPE,
                "reason": self.reason,
                "domain": self.domain,
                "metadata": dict(self.metadata),
            }
        ]
        if self.violations:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "field_violations": [
                        {"field": f, "description": d} for f, d in self.violations
                    ],
                }
            )
        details.extend(self.extra_details)
        return {
            "error": {
                "code": self.http_status,
                "status": self.code.name,
                "message": self.message,
                "details": details,
            }
        }

    def body(self) -> bytes:
        return json.dumps(self.document(), separators=(",", ":"), ensure_ascii=False).encode()


def bad_request(message: str, violations: Sequence[tuple[str, str]], reason: str = "") -> HttpError:
    """400 INVALID_ARGUMENT with a google.rpc.BadRequest listing each field violation."""
    return HttpError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason=reason or "INVALID_REQUEST",
        violations=violations,
    )


def unauthenticated(message: str) -> HttpError:
    return HttpError(grpc.StatusCode.UNAUTHENTICATED, message, reason="INVALID_TOKEN")


def not_found() -> HttpError:
    """404: no route, of the gateway or of an upstream, has this path."""
    return HttpError(grpc.StatusCode.NOT_FOUND, "No route matches this path.", reason="NO_ROUTE")


def method_not_allowed(allowed: Sequence[str]) -> HttpError:
    """405 with the Allow header; grpc-gateway's 501 would tell clients nothing."""
    listed = ", ".join(allowed)
    return HttpError(
        grpc.StatusCode.UNIMPLEMENTED,
        "This path does not accept this method.",
        reason="METHOD_NOT_ALLOWED",
        metadata={"allow": listed},
        status=HTTPStatus.METHOD_NOT_ALLOWED,
        headers=[(b"allow", listed.encode())],
    )


def body_too_large(max_bytes: int) -> HttpError:
    """413 for a request body over the gateway's limit."""
    return HttpError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"The request body is larger than {max_bytes} bytes.",
        reason="BODY_TOO_LARGE",
        metadata={"max_bytes": str(max_bytes)},
        status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    )


def _detail_json(
    detail: any_pb2.Any, pool: descriptor_pool.DescriptorPool | None
) -> dict[str, Any]:
    """A detail as JSON; a type nobody here knows stays ``{@type, value}`` rather than a 500."""
    for candidate in (descriptor_pool.Default(), pool):
        if candidate is None:
            continue
        try:
            converted: dict[str, Any] = json_format.MessageToDict(
                detail, preserving_proto_field_name=True, descriptor_pool=candidate
            )
            return converted
        except (TypeError, KeyError, json_format.Error):
            continue
    return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}


def from_rpc_error(
    error: grpc.aio.AioRpcError,
    *,
    upstream: str,
    pool: descriptor_pool.DescriptorPool | None = None,
) -> HttpError:
    """The HTTP error for an upstream's gRPC error, keeping its ErrorInfo and other details."""
    code = error.code()
    status: status_pb2.Status | None = None
    trailers = cast(Sequence[tuple[str, str | bytes]], error.trailing_metadata() or ())
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a corrupt trailer must not turn into a 500
                log.warning("%s sent an unreadable %s", upstream, STATUS_DETAILS_KEY)
            break
    if status is None or status.code != code.value[0]:
        message = GENERIC_MESSAGES.get(code) or error.details() or code.name
        if code in GENERIC_MESSAGES:
            log.warning("%s answered %s: %s", upstream, code.name, error.details())
        reason = "UPSTREAM_UNAVAILABLE" if code == grpc.StatusCode.UNAVAILABLE else ""
        return HttpError(code, message, reason=reason, metadata={"service": upstream})
    info: error_details_pb2.ErrorInfo | None = None
    extra: list[dict[str, Any]] = []
    seen: set[str] = set()
    for detail in status.details:
        # AIP-193: each detail type at most once, and exactly one ErrorInfo (the first).
        if detail.type_url in seen:
            continue
        seen.add(detail.type_url)
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        else:
            extra.append(_detail_json(detail, pool))
    http_status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    if info is not None and info.reason == PREMIUM_REQUIRED:
        http_status = HTTPStatus.PAYMENT_REQUIRED
    if info is not None and info.metadata.get("retry_after", "").isdigit():
        headers.append((b"retry-after", info.metadata["retry_after"].encode()))
    return HttpError(
        code,
        status.message,
        reason=info.reason if info else "",
        domain=info.domain if info else f"{upstream}.folio",
        metadata=dict(info.metadata) if info else {},
        extra_details=extra,
        status=http_status,
        headers=headers,
    )
