"""The user service over real gRPC, against real PostgreSQL."""

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from folio.user.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc
from tests.fixtures.services import RunningService

pytestmark = pytest.mark.asyncio


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def error_details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The ErrorInfo and BadRequest details a Folio error carries."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: dict[str, Any] = {}
    for detail in status.details if status else []:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


async def upsert(
    svc: RunningService, stub: Any, sub: str, email: str
) -> user_service_pb2.UpsertGoogleUserResponse:
    response: user_service_pb2.UpsertGoogleUserResponse = await stub.UpsertGoogleUser(
        user_service_pb2.UpsertGoogleUserRequest(
            google_sub=sub, email=email, display_name="Ada", picture_url="https://p/a.png"
        ),
        metadata=bearer(svc.service_token("user")),
    )
    return response


@pytest.fixture
async def stub(user_service: RunningService) -> Any:
    async with user_service.channel() as channel:
        yield user_service_pb2_grpc.UserServiceStub(channel)


async def test_health_reports_the_service_serving(user_service: RunningService) -> None:
    async with user_service.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "folio.user.v1.UserService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_upsert_creates_then_refreshes_email_keeping_chosen_name(
    user_service: RunningService, stub: Any
) -> None:
    first = await upsert(user_service, stub, "google-1", "ada@example.com")
    assert first.created and len(first.user.id) == 26
    await stub.UpdateMe(
        user_service_pb2.UpdateMeRequest(
            user=user_pb2.User(display_name="Countess"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=bearer(user_service.user_token(first.user.id)),
    )
    second = await upsert(user_service, stub, "google-1", "ada@new.example.com")
    assert not second.created
    assert second.user.id == first.user.id
    assert second.user.email == "ada@new.example.com"
    assert second.user.display_name == "Countess"


async def test_get_me_returns_the_token_user(user_service: RunningService, stub: Any) -> None:
    created = (await upsert(user_service, stub, "google-2", "bob@example.com")).user
    me = await stub.GetMe(
        user_service_pb2.GetMeRequest(), metadata=bearer(user_service.user_token(created.id))
    )
    assert me.user.id == created.id
    assert me.user.email == "bob@example.com"
    assert me.user.created_at.seconds > 0


@pytest.mark.parametrize("token", [None, "not-a-jwt", "eyJhbGciOiJub25lIn0.e30."])
async def test_get_me_without_a_valid_token_is_unauthenticated(
    stub: Any, token: str | None
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetMe(user_service_pb2.GetMeRequest(), metadata=bearer(token) if token else None)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_details(caught.value)["ErrorInfo"]
    assert info.reason == "INVALID_TOKEN"
    assert info.domain == "user.folio"


async def test_internal_methods_refuse_user_tokens_and_foreign_service_tokens(
    user_service: RunningService, stub: Any
) -> None:
    user = (await upsert(user_service, stub, "google-3", "cy@example.com")).user
    for token in (user_service.user_token(user.id), user_service.service_token("document")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUser(
                user_service_pb2.GetUserRequest(user_id=user.id), metadata=bearer(token)
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_user_methods_refuse_a_service_token_without_a_user(
    user_service: RunningService, stub: Any
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetMe(
            user_service_pb2.GetMeRequest(),
            metadata=bearer(user_service.service_token("user")),
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_get_user_of_unknown_id_is_not_found(user_service: RunningService, stub: Any) -> None:
    for user_id in ("01JAAAAAAAAAAAAAAAAAAAAAAA", "nonsense"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUser(
                user_service_pb2.GetUserRequest(user_id=user_id),
                metadata=bearer(user_service.service_token("user")),
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_details(caught.value)["ErrorInfo"].reason == "NOT_FOUND"


async def test_update_me_rejects_bad_values_and_foreign_fields(
    user_service: RunningService, stub: Any
) -> None:
    user = (await upsert(user_service, stub, "google-4", "di@example.com")).user
    token = user_service.user_token(user.id)
    cases = [
        (user_pb2.User(picture_url="javascript:alert(1)"), ["picture_url"], "picture_url"),
        (user_pb2.User(email="x@example.com"), ["email"], "update_mask.email"),
        (user_pb2.User(display_name="x" * 101), ["display_name"], "display_name"),
    ]
    for value, paths, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UpdateMe(
                user_service_pb2.UpdateMeRequest(
                    user=value, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=bearer(token),
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = error_details(caught.value)["BadRequest"].field_violations
        assert [v.field for v in violations] == [field]
    me = await stub.GetMe(user_service_pb2.GetMeRequest(), metadata=bearer(token))
    assert me.user.email == "di@example.com" and me.user.picture_url == "https://p/a.png"


async def test_update_options_merge_patches(user_service: RunningService, stub: Any) -> None:
    user = (await upsert(user_service, stub, "google-5", "ed@example.com")).user
    token = bearer(user_service.user_token(user.id))
    await stub.UpdateOptions(
        user_service_pb2.UpdateOptionsRequest(patch=struct({"theme": "dark", "ui": {"a": 1}})),
        metadata=token,
    )
    reply = await stub.UpdateOptions(
        user_service_pb2.UpdateOptionsRequest(
            patch=struct({"theme": None, "ui": {"b": True}, "lang": "fr"})
        ),
        metadata=token,
    )
    expected = {"ui": {"a": 1, "b": True}, "lang": "fr"}
    assert json_format.MessageToDict(reply.options) == expected
    stored = await stub.GetOptions(user_service_pb2.GetOptionsRequest(), metadata=token)
    assert json_format.MessageToDict(stored.options) == expected


async def test_concurrent_option_patches_on_different_keys_all_persist(
    user_service: RunningService, stub: Any
) -> None:
    user = (await upsert(user_service, stub, "google-6", "fa@example.com")).user
    token = bearer(user_service.user_token(user.id))
    await asyncio.gather(
        *(
            stub.UpdateOptions(
                user_service_pb2.UpdateOptionsRequest(patch=struct({f"key{i}": i})),
                metadata=token,
            )
            for i in range(20)
        )
    )
    stored = await stub.GetOptions(user_service_pb2.GetOptionsRequest(), metadata=token)
    assert json_format.MessageToDict(stored.options) == {f"key{i}": i for i in range(20)}


async def test_request_id_is_taken_from_metadata_and_echoed(
    user_service: RunningService, stub: Any
) -> None:
    user = (await upsert(user_service, stub, "google-7", "gi@example.com")).user
    call = stub.GetMe(
        user_service_pb2.GetMeRequest(),
        metadata=(*bearer(user_service.user_token(user.id)), ("x-request-id", "req-123")),
    )
    await call
    assert ("x-request-id", "req-123") in tuple(await call.initial_metadata())
    generated = stub.GetMe(user_service_pb2.GetMeRequest(), metadata=None)
    with pytest.raises(grpc.aio.AioRpcError):
        await generated
    echoed = dict(await generated.initial_metadata())
    assert len(echoed["x-request-id"]) == 26


async def test_nul_characters_are_invalid_not_internal(
    user_service: RunningService, stub: Any
) -> None:
    user = (await upsert(user_service, stub, "google-8", "nul@example.com")).user
    token = bearer(user_service.user_token(user.id))
    for patch in ({"a\x00": 1}, {"a": "b\x00"}, {"a": ["\x00"]}):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UpdateOptions(
                user_service_pb2.UpdateOptionsRequest(patch=struct(patch)), metadata=token
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateMe(
            user_service_pb2.UpdateMeRequest(
                user=user_pb2.User(display_name="a\x00b"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=token,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
