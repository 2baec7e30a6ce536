"""gRPC status -> HTTP status and AIP-193 bodies."""

import json
from http import HTTPStatus

import grpc
import pytest
from google.protobuf import any_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import HTTP_STATUS, HttpError, from_rpc_error

TABLE = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def _error(code: grpc.StatusCode, message: str, *details: object) -> grpc.aio.AioRpcError:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)  # type: ignore[arg-type]
        packed.append(item)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message, None)


def test_code_table_matches_the_reference() -> None:
    assert {code.name: int(status) for code, status in HTTP_STATUS.items()} == TABLE


def test_domain_error_keeps_error_info_and_message() -> None:
    info = error_details_pb2.ErrorInfo(reason="DOC_NOT_FOUND", domain="document.folio")
    error = from_rpc_error(_error(grpc.StatusCode.NOT_FOUND, "no such doc", info), upstream="d")
    assert json.loads(error.body()) == {
        "error": {
            "code": 404,
            "status": "NOT_FOUND",
            "message": "no such doc",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "DOC_NOT_FOUND",
                    "domain": "document.folio",
                    "metadata": {},
                }
            ],
        }
    }


def test_premium_required_is_402() -> None:
    info = error_details_pb2.ErrorInfo(reason="PREMIUM_REQUIRED", domain="llm.folio")
    error = from_rpc_error(_error(grpc.StatusCode.PERMISSION_DENIED, "pay", info), upstream="llm")
    assert error.http_status == HTTPStatus.PAYMENT_REQUIRED
    assert json.loads(error.body())["error"]["status"] == "PERMISSION_DENIED"


def test_other_permission_denied_stays_403() -> None:
    info = error_details_pb2.ErrorInfo(reason="ADMIN_REQUIRED", domain="user.folio")
    error = from_rpc_error(_error(grpc.StatusCode.PERMISSION_DENIED, "no", info), upstream="u")
    assert error.http_status == HTTPStatus.FORBIDDEN


def test_unauthenticated_carries_the_bearer_challenge() -> None:
    info = error_details_pb2.ErrorInfo(reason="INVALID_TOKEN", domain="user.folio")
    error = from_rpc_error(_error(grpc.StatusCode.UNAUTHENTICATED, "bad", info), upstream="u")
    assert (b"www-authenticate", b'Bearer error="invalid_token"') in error.headers


def test_rate_limit_sets_retry_after() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="RATE_LIMITED", domain="llm.folio", metadata={"retry_after": "7"}
    )
    error = from_rpc_error(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", info), upstream="l")
    assert error.http_status == HTTPStatus.TOO_MANY_REQUESTS
    assert (b"retry-after", b"7") in error.headers


def test_bad_request_and_known_details_are_rendered_as_json() -> None:
    info = error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="user.folio")
    violation = error_details_pb2.BadRequest.FieldViolation(field="title", description="empty")
    bad = error_details_pb2.BadRequest(field_violations=[violation])
    error = from_rpc_error(_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", info, bad), upstream="u")
    details = json.loads(error.body())["error"]["details"]
    assert details[1] == {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "field_violations": [{"field": "title", "description": "empty"}],
    }


def test_unknown_detail_types_stay_base64_instead_of_failing() -> None:
    info = error_details_pb2.ErrorInfo(reason="X", domain="d")
    unknown = any_pb2.Any(type_url="type.googleapis.com/nobody.Knows", value=b"\x08\x01")
    status = status_pb2.Status(code=13, message="m", details=[any_pb2.Any(), unknown])
    status.details[0].Pack(info)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    rpc = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailers, "m", None)
    details = json.loads(from_rpc_error(rpc, upstream="u").body())["error"]["details"]
    assert details[1] == {"@type": "type.googleapis.com/nobody.Knows", "value": "CAE="}


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_transport_errors_do_not_leak_internals(code: grpc.StatusCode, status: int) -> None:
    text = "failed to connect to all addresses; last error: 10.1.2.3:50052"
    rpc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), text, None)
    error = from_rpc_error(rpc, upstream="user")
    body = json.loads(error.body())["error"]
    assert error.http_status == status
    assert "10.1.2.3" not in error.body().decode()
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert body["details"][0]["metadata"] == {"service": "user"}


def test_every_gateway_error_has_exactly_one_error_info() -> None:
    error = HttpError(grpc.StatusCode.NOT_FOUND, "x", violations=[("a", "b")])
    types = [d["@type"] for d in error.document()["error"]["details"]]
    assert types.count("type.googleapis.com/google.rpc.ErrorInfo") == 1


def test_struct_is_not_an_error_detail_we_lose() -> None:
    detail = struct_pb2.Struct()
    detail.update({"k": "v"})
    info = error_details_pb2.ErrorInfo(reason="R", domain="d")
    error = from_rpc_error(_error(grpc.StatusCode.ABORTED, "m", info, detail), upstream="u")
    assert error.http_status == HTTPStatus.CONFLICT
    assert json.loads(error.body())["error"]["details"][1]["value"] == {"k": "v"}


def test_each_detail_type_appears_once() -> None:
    first = error_details_pb2.ErrorInfo(reason="FIRST", domain="d")
    second = error_details_pb2.ErrorInfo(reason="SECOND", domain="d")
    hint = error_details_pb2.Help(links=[error_details_pb2.Help.Link(url="https://x")])
    rpc = _error(grpc.StatusCode.NOT_FOUND, "m", first, hint, second, hint)
    details = json.loads(from_rpc_error(rpc, upstream="u").body())["error"]["details"]
    assert [d["@type"].rsplit(".", 1)[1] for d in details] == ["ErrorInfo", "Help"]
    assert details[0]["reason"] == "FIRST"
