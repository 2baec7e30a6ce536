"""The task service's composition root: the gRPC service, the outbox relay, the listener.

The relay runs here, one loop per replica; ``FOR UPDATE SKIP LOCKED`` lets replicas
share the outbox. A PostgreSQL LISTEN connection wakes the relay when a message is
committed and wakes long polls when a task changes.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from folio.task.v1 import task_service_pb2, task_service_pb2_grpc
from libs.access import CachedRoles, Roles
from libs.config import Settings, get_settings
from libs.db import Database
from libs.embedded import sqlalchemy_url
from libs.grpc_server import GrpcServer, Servicer, build_security
from libs.tasks.app import create_celery_app
from libs.tasks.relay import OutboxRelay
from services.task.listener import OUTBOX_CHANNEL, TASK_CHANGED_CHANNEL, Listener, TaskWatchers
from services.task.servicer import TaskService

NAME = "task"


async def _no_roles(_user_id: str) -> Roles | None:
    # TaskService has no PREMIUM or ADMIN methods; were one added, it would fail closed.
    return None


@dataclass
class TaskServer:
    """The gRPC server and the background loops that belong with it."""

    grpc: GrpcServer
    relay: OutboxRelay
    listener: Listener

    @contextlib.asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """Run the listener and the relay while the block runs."""
        loops = [
            asyncio.create_task(self.listener.run(), name="task-listener"),
            asyncio.create_task(self.relay.run(), name="outbox-relay"),
        ]
        try:
            await asyncio.wait_for(self.listener.ready.wait(), timeout=30)
            yield
        finally:
            for loop in loops:
                loop.cancel()
            for loop in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await loop


def _libpq(url: str) -> str:
    return sqlalchemy_url(url).replace("postgresql+psycopg://", "postgresql://", 1)


def create_server(settings: Settings, database: Database) -> TaskServer:
    """The task service with its dependencies, not yet bound or started."""
    assert settings.database_url
    watchers = TaskWatchers()
    listener = Listener(_libpq(settings.database_url), [OUTBOX_CHANNEL, TASK_CHANGED_CHANNEL])
    relay = OutboxRelay(
        database, create_celery_app(settings), poll_seconds=settings.task_relay_poll_seconds
    )
    listener.subscribe(OUTBOX_CHANNEL, relay.wake)
    listener.subscribe(TASK_CHANGED_CHANNEL, watchers.notify)
    servicer = Servicer(
        task_service_pb2_grpc.add_TaskServiceServicer_to_server,
        TaskService(watchers),
        task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    )
    server = GrpcServer(
        NAME,
        [servicer],
        security=build_security(settings),
        roles=CachedRoles(_no_roles),
        database=database,
        grace_period=settings.grace_period_seconds,
    )
    return TaskServer(server, relay, listener)


async def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("FOLIO_DATABASE_URL is required")
    if not settings.redis_url:
        raise SystemExit("FOLIO_REDIS_URL is required (the task broker)")
    database = Database(settings.database_url)
    server = create_server(settings, database)
    server.grpc.bind(f"{settings.bind_host}:{settings.port(NAME)}")
    try:
        async with server.background():
            await server.grpc.serve_until_signalled()
    finally:
        await database.dispose()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
