"""The task service, as the service kit runs it: the gRPC service, the outbox relay, the listener.

The relay runs here, one loop per replica; ``FOR UPDATE SKIP LOCKED`` lets replicas
share the outbox. A PostgreSQL LISTEN connection wakes the relay when a message is
committed and wakes long polls when a task changes.
"""

from pathlib import Path

from folio.task.v1 import task_service_pb2, task_service_pb2_grpc
from libs.access import Roles
from libs.config import SERVICE_PORTS
from libs.service import Kit, Parts, PurgeOrder, Service, servicer
from libs.tasks.app import create_celery_app
from libs.tasks.relay import OutboxRelay
from libs.urls import libpq_url
from services.task.handlers import purge_user
from services.task.listener import OUTBOX_CHANNEL, TASK_CHANGED_CHANNEL, Listener, TaskWatchers
from services.task.servicer import TaskService
from services.task.settings import TaskSettings


async def _no_roles(_user_id: str) -> Roles | None:
    # TaskService has no PREMIUM or ADMIN methods; were one added, it would fail closed.
    return None


async def build(kit: Kit[TaskSettings]) -> Parts:
    assert kit.settings.database_url, "checked by the runner"
    watchers = TaskWatchers()
    listener = Listener(
        libpq_url(kit.settings.database_url), [OUTBOX_CHANNEL, TASK_CHANGED_CHANNEL]
    )
    relay = OutboxRelay(
        kit.database,
        create_celery_app(kit.settings),
        poll_seconds=kit.settings.task_relay_poll_seconds,
    )
    listener.subscribe(OUTBOX_CHANNEL, relay.wake)
    listener.subscribe(TASK_CHANGED_CHANNEL, watchers.notify)
    return Parts(
        servicers=[
            servicer(
                task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
                task_service_pb2_grpc.add_TaskServiceServicer_to_server,
                TaskService(watchers),
            )
        ],
        roles=_no_roles,
        background=[listener.run, relay.run],
        ready=[listener.ready.wait],
        purge=purge_user,
    )


SERVICE = Service(
    name="task",
    port=SERVICE_PORTS["task"],
    settings=TaskSettings,
    build=build,
    schema="tasks",
    migrations=Path(__file__).parent / "migrations",
    purge_order=PurgeOrder.LATE,
)
