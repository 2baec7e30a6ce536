"""The document domain's tasks: PDF export.

An export renders the document's current revision with the images of its own ready
attachments, stores the PDF under the document's prefix and answers with a short-lived
download URL. The stored PDF is keyed by the revision and the attachments it showed, so
exporting an unchanged document again reuses it.
"""

import asyncio
import datetime as dt
import hashlib
import os
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from folio.user.v1 import user_service_pb2, user_service_pb2_grpc
from libs.config import settings_as
from libs.db import get_db_context
from libs.storage import Storage, storage_config
from libs.tasks import TaskContext, task
from services.document import content_types, objects
from services.document.handlers import EXPORT_KIND
from services.document.models import READY, Attachment, Document, Export
from services.document.pdf import referenced_attachments, render_pdf
from services.document.settings import DocumentSettings

# One client per worker process, made after the fork (boto3 sessions do not survive one).
_storage: tuple[int, Storage] | None = None


def storage_for(ctx: TaskContext) -> Storage:
    global _storage
    if _storage is None or _storage[0] != os.getpid():
        _storage = (os.getpid(), Storage(storage_config(ctx.settings)))
    return _storage[1]


def render_key(revision: int, attachments: list[tuple[str, str]]) -> str:
    """What a stored PDF depends on: the revision and the attachments it showed."""
    digest = hashlib.sha256(str(revision).encode())
    for attachment_id, etag in attachments:
        digest.update(f"|{attachment_id}:{etag}".encode())
    return digest.hexdigest()


async def _author(ctx: TaskContext, user_id: str) -> str:
    users = user_service_pb2_grpc.UserServiceStub(ctx.channel("user"))
    reply = await users.GetUser(user_service_pb2.GetUserRequest(user_id=user_id))
    return reply.user.display_name or reply.user.email


@task(EXPORT_KIND, time_limit=120)
async def export_pdf(ctx: TaskContext) -> dict[str, Any]:
    """Render the document's current revision to PDF (or reuse it) and link to it."""
    user_id, document_id = ctx.user_id, str(ctx.params.get("document_id", ""))
    if not user_id or not document_id:
        raise ValueError("an export needs its user and document")
    settings = settings_as(DocumentSettings, ctx.settings)
    storage = storage_for(ctx)
    async with get_db_context() as session:
        document = await session.scalar(
            select(Document).where(Document.id == document_id, Document.user_id == user_id)
        )
        if document is None:
            return {"success": False, "error": "document not found"}
        wanted = referenced_attachments(document.content)
        ready = (
            await session.scalars(
                select(Attachment).where(
                    Attachment.document_id == document_id,
                    Attachment.id.in_(wanted),
                    Attachment.status == READY,
                    Attachment.content_type.in_(content_types.IMAGES),
                )
            )
        ).all()
        revision, title, content = document.revision, document.title, document.content
        key = render_key(revision, sorted((a.id, a.updated_at.isoformat()) for a in ready))
        stored = await session.get(Export, (document_id, key))
    await ctx.progress(10)
    if stored is not None and await storage.head(stored.object_key) is not None:
        ctx.log.info("revision %d was exported before; reusing its PDF", revision)
        object_key, pages, size = stored.object_key, stored.pages, stored.size_bytes
    else:
        images = {a.id: await storage.get(a.object_key) for a in ready}
        await ctx.progress(30)
        author = await _author(ctx, user_id)
        # reportlab is CPU-bound and not thread-safe; each worker process renders one at a time.
        rendered = await asyncio.to_thread(
            render_pdf, title=title, author=author, markdown=content, images=images
        )
        await ctx.progress(80)
        object_key = objects.export_key(user_id, document_id, revision, key)
        await storage.put(object_key, rendered.data, "application/pdf")
        pages, size = rendered.pages, len(rendered.data)
        try:
            async with get_db_context() as session:
                await session.execute(
                    insert(Export)
                    .values(
                        document_id=document_id,
                        render_key=key,
                        revision=revision,
                        object_key=object_key,
                        pages=pages,
                        size_bytes=size,
                    )
                    .on_conflict_do_nothing()
                )
        except IntegrityError:
            # The document was deleted while it rendered: its PDF must not outlive it.
            await storage.delete(object_key)
            return {"success": False, "error": "document not found"}
    seconds = settings.document_download_url_seconds
    url = await storage.presign_download(
        object_key, expires_in=seconds, filename=f"{_filename(title)}.pdf"
    )
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return {
        "download_url": url,
        "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        "pages": pages,
        "size_bytes": size,
        "revision": revision,
    }


def _filename(title: str) -> str:
    cleaned = "".join(char for char in title if char.isprintable() and char not in '/\\"')
    return cleaned.strip()[:100] or "document"
