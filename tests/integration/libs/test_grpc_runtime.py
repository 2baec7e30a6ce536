"""Server bootstrap and client channels over real gRPC: metadata, deadlines, retries, drain."""

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from folio.user.v1 import user_service_pb2
from libs.access import Principal, Roles, current_principal, principal_var
from libs.config import Settings
from libs.db import Database, configure_default_database, get_db_context
from libs.grpc_client import service_channel
from libs.grpc_server import GrpcServer, Servicer, build_security
from libs.logs import request_id_var
from libs.secrets import load_secrets
from tests.fixtures.processes import free_port

GET_USER = "/folio.user.v1.UserService/GetUser"
GET_ME = "/folio.user.v1.UserService/GetMe"


class Recorder:
    """A UserService stand-in that records what reached it and can be slow."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.delay = 0.0

    async def handle(self, request: Any, context: Any) -> user_service_pb2.GetUserResponse:
        self.seen.append(
            {
                "metadata": dict(context.invocation_metadata()),
                "principal": current_principal(),
                "deadline": context.time_remaining(),
            }
        )
        await asyncio.sleep(self.delay)
        return user_service_pb2.GetUserResponse()

    def add_to_server(self, _: object, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.handle,
            request_deserializer=user_service_pb2.GetUserRequest.FromString,
            response_serializer=user_service_pb2.GetUserResponse.SerializeToString,
        )
        me = grpc.unary_unary_rpc_method_handler(
            self.handle,
            request_deserializer=user_service_pb2.GetMeRequest.FromString,
            response_serializer=user_service_pb2.GetUserResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "folio.user.v1.UserService", {"GetUser": handler, "GetMe": me}
                ),
            )
        )


async def no_roles(_: str) -> Roles | None:
    return Roles(is_premium=False, is_admin=False)


def make_server(settings: Settings, recorder: Recorder, grace: float = 5.0) -> GrpcServer:
    servicer = Servicer(recorder.add_to_server, recorder, "folio.user.v1.UserService")
    return GrpcServer(
        "user", [servicer], security=build_security(settings), roles=no_roles, grace_period=grace
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    port = free_port()
    return Settings(data_dir=tmp_path, user_port=port, default_deadline_seconds=0.5)


def channel_for(settings: Settings) -> grpc.aio.Channel:
    key = load_secrets(settings).internal_token_key
    return service_channel("user", caller="task", settings=settings, internal_token_key=key)


def get_user(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        GET_USER,
        request_serializer=user_service_pb2.GetUserRequest.SerializeToString,
        response_deserializer=user_service_pb2.GetUserResponse.FromString,
    )


async def test_channel_sends_service_token_request_id_and_acting_user(settings: Settings) -> None:
    recorder = Recorder()
    server = make_server(settings, recorder)
    server.bind(settings.address("user"))
    await server.start()
    try:
        async with channel_for(settings) as channel:
            request_token = request_id_var.set("req-42")
            principal_token = principal_var.set(Principal(user_id="01USERUSERUSERUSERUSERUSER"))
            try:
                await get_user(channel)(user_service_pb2.GetUserRequest(user_id="x"))
                me = channel.unary_unary(
                    GET_ME,
                    request_serializer=user_service_pb2.GetMeRequest.SerializeToString,
                    response_deserializer=user_service_pb2.GetUserResponse.FromString,
                )
                await me(user_service_pb2.GetMeRequest())
            finally:
                principal_var.reset(principal_token)
                request_id_var.reset(request_token)
    finally:
        await server.stop()
    internal, acting = recorder.seen
    assert internal["principal"].service == "task"
    assert internal["metadata"]["x-request-id"] == "req-42"
    assert 0 < internal["deadline"] <= 0.5
    # A USER method admits the service because it says which user it acts for.
    assert acting["principal"] == Principal(user_id="01USERUSERUSERUSERUSERUSER", service="task")


async def test_default_deadline_applies(settings: Settings) -> None:
    recorder = Recorder()
    recorder.delay = 2.0
    server = make_server(settings, recorder, grace=0)
    server.bind(settings.address("user"))
    await server.start()
    try:
        async with channel_for(settings) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await get_user(channel)(user_service_pb2.GetUserRequest(user_id="x"))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await server.stop()


async def test_calls_retry_while_the_peer_is_starting(settings: Settings) -> None:
    recorder = Recorder()
    server = make_server(settings, recorder)
    server.bind(settings.address("user"))

    async def start_later() -> None:
        await asyncio.sleep(0.15)
        await server.start()

    async with channel_for(settings.model_copy(update={"default_deadline_seconds": 5})) as ch:
        starting = asyncio.create_task(start_later())
        await get_user(ch)(user_service_pb2.GetUserRequest(user_id="x"))
        await starting
    await server.stop()
    assert len(recorder.seen) == 1


async def test_stop_drains_in_flight_calls_and_reports_not_serving(settings: Settings) -> None:
    recorder = Recorder()
    recorder.delay = 0.5
    server = make_server(settings, recorder)
    server.bind(settings.address("user"))
    await server.start()
    async with channel_for(settings.model_copy(update={"default_deadline_seconds": 5})) as ch:
        in_flight = asyncio.ensure_future(
            get_user(ch)(user_service_pb2.GetUserRequest(user_id="x"))
        )
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        health = health_pb2_grpc.HealthStub(ch)
        with pytest.raises(grpc.aio.AioRpcError):
            # New calls are refused while the server drains.
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert isinstance(await in_flight, user_service_pb2.GetUserResponse)
        await stopping


async def test_get_db_context_commits_or_rolls_back(database_url: str) -> None:
    database = Database(database_url, pool_size=1)
    configure_default_database(database)
    try:
        async with get_db_context() as session:
            await session.execute(text("CREATE TABLE notes (body text)"))
            await session.execute(text("INSERT INTO notes VALUES ('kept')"))
        with pytest.raises(RuntimeError):
            async with get_db_context() as session:
                await session.execute(text("INSERT INTO notes VALUES ('lost')"))
                raise RuntimeError("task failed")
        async with get_db_context() as session:
            rows = (await session.execute(text("SELECT body FROM notes"))).scalars().all()
        assert rows == ["kept"]
    finally:
        await database.dispose()
