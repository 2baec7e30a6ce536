"""Stored objects go with their rows: after commit, and later if storage was down."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from sqlalchemy import text

from folio.document.v1 import document_pb2, document_service_pb2, document_service_pb2_grpc
from libs.devstack import migration_targets
from libs.ids import new_id
from libs.migrations import migrate_all
from libs.seaweedfs import EmbeddedS3, start_seaweedfs
from libs.secrets import load_secrets
from libs.service import RunningService, start_service
from libs.storage import Storage, storage_config
from libs.tokens import sign_access_token
from services.document.server import SERVICE
from services.document.settings import DocumentSettings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass
class Env:
    service: RunningService
    settings: DocumentSettings
    s3_dir: Path
    s3: EmbeddedS3
    stub: "document_service_pb2_grpc.DocumentServiceAsyncStub"
    metadata: tuple[tuple[str, str], ...]

    async def scalar(self, query: str) -> Any:
        async with self.service.database.session() as session:
            return await session.scalar(text(query))

    async def uploaded_attachment(self, document_id: str) -> str:
        """An attachment whose bytes are in storage, not yet completed; returns its key."""
        created = await self.stub.CreateAttachment(
            document_service_pb2.CreateAttachmentRequest(
                document_id=document_id,
                filename="a.png",
                content_type="image/png",
                size_bytes=len(PNG),
            ),
            metadata=self.metadata,
        )
        upload = created.upload
        async with httpx.AsyncClient() as client:
            response = await client.post(
                upload.url, data=dict(upload.fields), files={"file": ("a.png", PNG)}
            )
        assert response.status_code in (200, 201, 204), response.text
        return str(upload.fields["key"])


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(database_url: str, tmp_path: Path) -> AsyncIterator[EnvFactory]:
    migrate_all(database_url, migration_targets())
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def make(**overrides: Any) -> Env:
        s3_dir = tmp_path / "s3"
        s3 = start_seaweedfs(s3_dir)
        settings = DocumentSettings(
            data_dir=tmp_path,
            database_url=database_url,
            s3_url=s3.url,
            s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key,
            s3_bucket=f"deletions-{new_id().lower()}",
            document_sweep_seconds=0.2,
            **overrides,
        )
        service = await start_service(SERVICE, settings, address="127.0.0.1:0")
        token = sign_access_token(
            load_secrets(settings).active_key(),
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            user_id=new_id(),
            session_id=new_id(),
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        env = Env(
            service,
            settings,
            s3_dir,
            s3,
            document_service_pb2_grpc.DocumentServiceStub(channel),
            (("authorization", f"Bearer {token}"),),
        )

        async def cleanup() -> None:
            await channel.close(None)
            await service.stop(grace=0)
            env.s3.stop()

        cleanups.append(cleanup)
        return env

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


async def wait_for(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_deleted_documents_objects_go_once_storage_is_back(make_env: EnvFactory) -> None:
    env = await make_env()
    created = await env.stub.CreateDocument(
        document_service_pb2.CreateDocumentRequest(document=document_pb2.Document(title="t")),
        metadata=env.metadata,
    )
    document_id = created.document.id
    key = await env.uploaded_attachment(document_id)
    storage = Storage(storage_config(env.settings))
    assert await storage.head(key) is not None

    env.s3.stop()
    # The rows go at once; the call does not fail because storage is down.
    await env.stub.DeleteDocument(
        document_service_pb2.DeleteDocumentRequest(document_id=document_id),
        metadata=env.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await env.stub.GetDocument(
            document_service_pb2.GetDocumentRequest(document_id=document_id),
            metadata=env.metadata,
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    pending = "SELECT count(*) FROM documents.object_deletions WHERE prefix LIKE '%%%s%%'"
    assert await env.scalar(pending % document_id) == 1

    env.s3 = start_seaweedfs(env.s3_dir)

    async def deleted() -> bool:
        return bool(await env.scalar(pending % document_id) == 0)

    await wait_for(deleted, 30, "the recorded deletion to run")
    assert await storage.head(key) is None
    storage.close()


async def test_uploads_never_completed_are_swept(make_env: EnvFactory) -> None:
    env = await make_env(document_pending_upload_seconds=3, document_upload_url_seconds=3)
    created = await env.stub.CreateDocument(
        document_service_pb2.CreateDocumentRequest(document=document_pb2.Document(title="t")),
        metadata=env.metadata,
    )
    key = await env.uploaded_attachment(created.document.id)
    storage = Storage(storage_config(env.settings))

    async def swept() -> bool:
        rows = await env.scalar(
            f"SELECT count(*) FROM documents.attachments WHERE object_key = '{key}'"
        )
        return rows == 0 and await storage.head(key) is None

    assert await storage.head(key) is not None
    await wait_for(swept, 30, "the stale upload to be swept")
    storage.close()
