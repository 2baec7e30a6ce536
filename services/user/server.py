"""The user service, as the service kit runs it."""

from pathlib import Path

from folio.user.v1 import user_service_pb2, user_service_pb2_grpc
from libs.config import SERVICE_PORTS, Settings
from libs.service import Kit, Parts, PurgeOrder, Service, servicer
from libs.tasks.queue import TaskQueue
from services.user.deletion import purge_user
from services.user.handlers import role_loader
from services.user.servicer import UserService


async def build(kit: Kit[Settings]) -> Parts:
    tasks = TaskQueue(kit.channel("task"))
    reads = kit.statement_pool()
    return Parts(
        servicers=[
            servicer(
                user_service_pb2.DESCRIPTOR.services_by_name["UserService"],
                user_service_pb2_grpc.add_UserServiceServicer_to_server,
                UserService(reads, tasks),
            )
        ],
        # The user service owns the roles it checks.
        roles=role_loader(reads),
        purge=purge_user,
    )


SERVICE = Service(
    name="user",
    port=SERVICE_PORTS["user"],
    settings=Settings,
    build=build,
    schema="users",
    migrations=Path(__file__).parent / "migrations",
    purge_order=PurgeOrder.LAST,
)
