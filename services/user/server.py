"""The user service's composition root."""

import asyncio

from folio.task.v1 import task_service_pb2_grpc
from folio.user.v1 import user_service_pb2, user_service_pb2_grpc
from libs.access import CachedRoles
from libs.config import Settings, get_settings
from libs.db import Database
from libs.grpc_client import service_channel
from libs.grpc_server import GrpcServer, Servicer, build_security
from services.user.handlers import role_loader
from services.user.servicer import UserService

NAME = "user"


def create_server(settings: Settings, database: Database) -> GrpcServer:
    """The user service with its dependencies, not yet bound or started."""
    security = build_security(settings)
    tasks = task_service_pb2_grpc.TaskServiceStub(
        service_channel(
            "task",
            caller=NAME,
            settings=settings,
            internal_token_key=security.internal_token_key,
        )
    )
    servicer = Servicer(
        user_service_pb2_grpc.add_UserServiceServicer_to_server,
        UserService(tasks),
        user_service_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
    )
    return GrpcServer(
        NAME,
        [servicer],
        security=security,
        roles=CachedRoles(role_loader(database)),
        database=database,
        grace_period=settings.grace_period_seconds,
    )


async def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise SystemExit("FOLIO_DATABASE_URL is required")
    database = Database(settings.database_url)
    server = create_server(settings, database)
    server.bind(f"{settings.bind_host}:{settings.port(NAME)}")
    try:
        await server.serve_until_signalled()
    finally:
        await database.dispose()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
