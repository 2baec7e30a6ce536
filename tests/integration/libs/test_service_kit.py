"""A service built from the kit in a few lines gets health, reflection, the access policy
and a graceful drain from the runner alone."""

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession

from folio.purge.v1 import purge_service_pb2, purge_service_pb2_grpc
from libs.config import Settings
from libs.ids import new_id
from libs.secrets import load_secrets
from libs.service import Kit, Parts, PurgeOrder, RunningService, Service, start_service
from libs.tokens import sign_access_token, sign_service_token

GRPCURL = Path(sys.executable).parent / "grpcurl"


class Notes:
    """The user data of the service under test, and a gate that holds its purges."""

    def __init__(self) -> None:
        self.by_user: dict[str, int] = {}
        self.open = asyncio.Event()
        self.open.set()
        self.entered = asyncio.Event()

    async def purge(self, _session: AsyncSession, user_id: str) -> int:
        self.entered.set()
        await self.open.wait()
        return self.by_user.pop(user_id, 0)


def kit_service(notes: Notes) -> Service[Settings]:
    async def build(_kit: Kit[Settings]) -> Parts:
        return Parts(servicers=[], purge=notes.purge)

    return Service(
        name="kittest", port=0, settings=Settings, build=build, purge_order=PurgeOrder.DEFAULT
    )


@pytest.fixture
async def running(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[RunningService, Notes]]:
    notes = Notes()
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    service = await start_service(kit_service(notes), settings, address="127.0.0.1:0")
    yield service, notes
    await service.stop(grace=0)


def purge_call(
    service: RunningService, user_id: str, token: str | None
) -> "asyncio.Future[purge_service_pb2.PurgeUserDataResponse]":
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    stub = purge_service_pb2_grpc.PurgeServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def call() -> purge_service_pb2.PurgeUserDataResponse:
        try:
            reply: purge_service_pb2.PurgeUserDataResponse = await stub.PurgeUserData(
                purge_service_pb2.PurgeUserDataRequest(user_id=user_id), metadata=metadata
            )
            return reply
        finally:
            await channel.close(None)

    return asyncio.ensure_future(call())


async def health(service: RunningService, name: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=2
        )
    return int(reply.status)


async def test_health_and_reflection_come_from_the_kit(
    running: tuple[RunningService, Notes],
) -> None:
    service, _ = running
    assert await health(service) == health_pb2.HealthCheckResponse.SERVING
    assert (
        await health(service, "folio.purge.v1.PurgeService")
        == health_pb2.HealthCheckResponse.SERVING
    )
    listed = await asyncio.to_thread(
        subprocess.run,
        [str(GRPCURL), "-plaintext", f"127.0.0.1:{service.port}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {"folio.purge.v1.PurgeService", "grpc.health.v1.Health"}


async def test_the_purge_is_internal_and_validates_its_user_id(
    running: tuple[RunningService, Notes],
) -> None:
    service, notes = running
    secrets = load_secrets(service.settings)
    user_id = new_id()
    notes.by_user[user_id] = 3
    user_token = sign_access_token(
        secrets.active_key(),
        issuer=service.settings.token_issuer,
        audience=service.settings.token_audience,
        user_id=user_id,
        session_id=new_id(),
    )
    for token in (None, user_token):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await purge_call(service, user_id, token)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    service_token = sign_service_token(
        secrets.internal_token_key, caller="user", audience="kittest"
    )
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await purge_call(service, "not-a-ulid", service_token)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await purge_call(service, user_id, service_token)).deleted_count == 3
    assert (await purge_call(service, user_id, service_token)).deleted_count == 0


async def test_stop_drains_a_call_in_flight(running: tuple[RunningService, Notes]) -> None:
    service, notes = running
    secrets = load_secrets(service.settings)
    token = sign_service_token(secrets.internal_token_key, caller="user", audience="kittest")
    user_id = new_id()
    notes.by_user[user_id] = 1
    notes.open.clear()
    in_flight = purge_call(service, user_id, token)
    await asyncio.wait_for(notes.entered.wait(), 10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        probe = health_pb2_grpc.HealthStub(channel)
        await probe.Check(health_pb2.HealthCheckRequest(), timeout=2)
        stopping = asyncio.ensure_future(service.stop(grace=10))
        # Draining: the server stops answering SERVING (and soon refuses new calls).
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                reply = await probe.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                break
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                break
            assert asyncio.get_running_loop().time() < deadline, "still SERVING while stopping"
            await asyncio.sleep(0.05)
        assert not stopping.done()
        notes.open.set()
        assert (await asyncio.wait_for(in_flight, 10)).deleted_count == 1
        await asyncio.wait_for(stopping, 15)
