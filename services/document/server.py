"""The document service, as the service kit runs it."""

from functools import partial
from pathlib import Path

from folio.document.v1 import document_service_pb2, document_service_pb2_grpc
from libs.config import SERVICE_PORTS
from libs.service import Kit, Parts, PurgeOrder, Service, servicer
from libs.storage import Storage, storage_config
from libs.tasks.queue import TaskQueue
from services.document.handlers import DocumentDeps, purge_user
from services.document.objects import ObjectJanitor
from services.document.servicer import DocumentService
from services.document.settings import DocumentSettings


async def build(kit: Kit[DocumentSettings]) -> Parts:
    storage = Storage(storage_config(kit.settings))
    kit.on_close(partial(_close, storage))
    await storage.ensure_bucket()
    janitor = ObjectJanitor(kit.database, storage)
    deps = DocumentDeps(kit.settings, storage, janitor, TaskQueue(kit.channel("task")))
    sweep = partial(
        janitor.run,
        kit.settings.document_sweep_seconds,
        kit.settings.document_pending_upload_seconds,
    )
    return Parts(
        servicers=[
            servicer(
                document_service_pb2.DESCRIPTOR.services_by_name["DocumentService"],
                document_service_pb2_grpc.add_DocumentServiceServicer_to_server,
                DocumentService(deps),
            )
        ],
        background=[sweep],
        purge=partial(purge_user, janitor=janitor),
    )


async def _close(storage: Storage) -> None:
    storage.close()


SERVICE = Service(
    name="document",
    port=SERVICE_PORTS["document"],
    settings=DocumentSettings,
    build=build,
    schema="documents",
    migrations=Path(__file__).parent / "migrations",
    purge_order=PurgeOrder.DEFAULT,
)
