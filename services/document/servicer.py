"""DocumentService: proto <-> domain translation only."""

from typing import Any

import grpc

from folio.document.v1 import document_pb2, document_service_pb2, document_service_pb2_grpc
from libs.access import current_user_id
from libs.convert import timestamp
from libs.db import current_session
from libs.errors import InvalidArgument
from libs.storage import PresignedUpload
from services.document import handlers
from services.document.handlers import DocumentDeps
from services.document.models import READY, Attachment, Document, Revision

Context = grpc.aio.ServicerContext[Any, Any]
EDITABLE_FIELDS = ("title", "content")


def to_proto(document: Document, *, with_content: bool = True) -> document_pb2.Document:
    message = document_pb2.Document(
        id=document.id,
        title=document.title,
        revision=document.revision,
        etag=document.etag,
        word_count=document.word_count,
        summary=document.summary,
        created_at=timestamp(document.created_at),
        updated_at=timestamp(document.updated_at),
    )
    if with_content:
        # Left unset otherwise, so the BASIC view has no content field at all.
        message.content = document.content
    return message


def revision_to_proto(
    revision: Revision, *, with_content: bool = True
) -> document_pb2.DocumentRevision:
    message = document_pb2.DocumentRevision(
        revision=revision.revision,
        title=revision.title,
        author=revision.author,
        restored_from=revision.restored_from or 0,
        word_count=revision.word_count,
        created_at=timestamp(revision.created_at),
    )
    if with_content:
        message.content = revision.content
    return message


def attachment_to_proto(attachment: Attachment) -> document_pb2.Attachment:
    return document_pb2.Attachment(
        id=attachment.id,
        filename=attachment.filename,
        content_type=attachment.content_type,
        size_bytes=attachment.size_bytes,
        status=attachment.status,
        created_at=timestamp(attachment.created_at),
    )


def upload_to_proto(upload: PresignedUpload) -> document_pb2.PresignedUpload:
    return document_pb2.PresignedUpload(
        url=upload.url,
        method=upload.method,
        fields=upload.fields,
        headers=upload.headers,
        expires_at=timestamp(upload.expires_at),
    )


def _changes(request: document_service_pb2.UpdateDocumentRequest) -> dict[str, str]:
    paths = list(request.update_mask.paths)
    if not paths:
        given = request.document
        paths = ["title"] if given.title else []
        paths += ["content"] if given.HasField("content") else []
    if not paths:
        raise InvalidArgument("nothing to update", field_violations={"update_mask": "empty"})
    unknown = {path: "not an editable field" for path in paths if path not in EDITABLE_FIELDS}
    if unknown:
        raise InvalidArgument("cannot update these fields", field_violations=unknown)
    return {path: getattr(request.document, path) for path in paths}


class DocumentService(document_service_pb2_grpc.DocumentServiceServicer):
    def __init__(self, deps: DocumentDeps) -> None:
        self.deps = deps

    async def CreateDocument(
        self, request: document_service_pb2.CreateDocumentRequest, context: Context
    ) -> document_service_pb2.CreateDocumentResponse:
        document = await handlers.create_document(
            current_session(),
            self.deps.settings,
            current_user_id(),
            title=request.document.title,
            content=request.document.content,
        )
        return document_service_pb2.CreateDocumentResponse(document=to_proto(document))

    async def GetDocument(
        self, request: document_service_pb2.GetDocumentRequest, context: Context
    ) -> document_service_pb2.GetDocumentResponse:
        document = await handlers.get_owned(
            current_session(), current_user_id(), request.document_id
        )
        return document_service_pb2.GetDocumentResponse(document=to_proto(document))

    async def ListDocuments(
        self, request: document_service_pb2.ListDocumentsRequest, context: Context
    ) -> document_service_pb2.ListDocumentsResponse:
        full = handlers.full_view(request.view)
        documents, token = await handlers.list_documents(
            current_session(),
            current_user_id(),
            query=request.q,
            requested_size=request.page_size,
            page_token=request.page_token,
            full=full,
        )
        return document_service_pb2.ListDocumentsResponse(
            documents=[to_proto(d, with_content=full) for d in documents], next_page_token=token
        )

    async def UpdateDocument(
        self, request: document_service_pb2.UpdateDocumentRequest, context: Context
    ) -> document_service_pb2.UpdateDocumentResponse:
        document = await handlers.update_document(
            current_session(),
            self.deps.settings,
            current_user_id(),
            request.document_id,
            changes=_changes(request),
            etag=request.document.etag,
        )
        return document_service_pb2.UpdateDocumentResponse(document=to_proto(document))

    async def DeleteDocument(
        self, request: document_service_pb2.DeleteDocumentRequest, context: Context
    ) -> document_service_pb2.DeleteDocumentResponse:
        await handlers.delete_document(
            current_session(),
            self.deps.janitor,
            current_user_id(),
            request.document_id,
            request.etag,
        )
        return document_service_pb2.DeleteDocumentResponse()

    async def ListDocumentRevisions(
        self, request: document_service_pb2.ListDocumentRevisionsRequest, context: Context
    ) -> document_service_pb2.ListDocumentRevisionsResponse:
        revisions, token = await handlers.list_revisions(
            current_session(),
            current_user_id(),
            request.document_id,
            requested_size=request.page_size,
            page_token=request.page_token,
        )
        return document_service_pb2.ListDocumentRevisionsResponse(
            revisions=[revision_to_proto(r, with_content=False) for r in revisions],
            next_page_token=token,
        )

    async def GetDocumentRevision(
        self, request: document_service_pb2.GetDocumentRevisionRequest, context: Context
    ) -> document_service_pb2.GetDocumentRevisionResponse:
        revision = await handlers.get_revision(
            current_session(), current_user_id(), request.document_id, request.revision
        )
        return document_service_pb2.GetDocumentRevisionResponse(
            revision=revision_to_proto(revision)
        )

    async def RestoreDocumentRevision(
        self, request: document_service_pb2.RestoreDocumentRevisionRequest, context: Context
    ) -> document_service_pb2.RestoreDocumentRevisionResponse:
        document = await handlers.restore_revision(
            current_session(),
            current_user_id(),
            request.document_id,
            request.revision,
            request.etag,
        )
        return document_service_pb2.RestoreDocumentRevisionResponse(document=to_proto(document))

    async def CreateAttachment(
        self, request: document_service_pb2.CreateAttachmentRequest, context: Context
    ) -> document_service_pb2.CreateAttachmentResponse:
        attachment, upload = await handlers.create_attachment(
            current_session(),
            self.deps,
            current_user_id(),
            request.document_id,
            filename=request.filename,
            content_type=request.content_type,
            size_bytes=request.size_bytes,
        )
        return document_service_pb2.CreateAttachmentResponse(
            attachment=attachment_to_proto(attachment), upload=upload_to_proto(upload)
        )

    async def CompleteAttachment(
        self, request: document_service_pb2.CompleteAttachmentRequest, context: Context
    ) -> document_service_pb2.CompleteAttachmentResponse:
        attachment = await handlers.complete_attachment(
            current_session(),
            self.deps,
            current_user_id(),
            request.document_id,
            request.attachment_id,
        )
        return document_service_pb2.CompleteAttachmentResponse(
            attachment=attachment_to_proto(attachment)
        )

    async def GetAttachment(
        self, request: document_service_pb2.GetAttachmentRequest, context: Context
    ) -> document_service_pb2.GetAttachmentResponse:
        attachment = await handlers.get_attachment(
            current_session(), current_user_id(), request.document_id, request.attachment_id
        )
        message = attachment_to_proto(attachment)
        if attachment.status == READY:
            url, expires_at = await handlers.download_url(self.deps, attachment)
            message.download_url = url
            message.download_expires_at.CopyFrom(timestamp(expires_at))
        return document_service_pb2.GetAttachmentResponse(attachment=message)

    async def ListAttachments(
        self, request: document_service_pb2.ListAttachmentsRequest, context: Context
    ) -> document_service_pb2.ListAttachmentsResponse:
        attachments, token = await handlers.list_attachments(
            current_session(),
            current_user_id(),
            request.document_id,
            requested_size=request.page_size,
            page_token=request.page_token,
        )
        return document_service_pb2.ListAttachmentsResponse(
            attachments=[attachment_to_proto(a) for a in attachments], next_page_token=token
        )

    async def DeleteAttachment(
        self, request: document_service_pb2.DeleteAttachmentRequest, context: Context
    ) -> document_service_pb2.DeleteAttachmentResponse:
        await handlers.delete_attachment(
            current_session(),
            self.deps.janitor,
            current_user_id(),
            request.document_id,
            request.attachment_id,
        )
        return document_service_pb2.DeleteAttachmentResponse()

    async def ExportDocumentPdf(
        self, request: document_service_pb2.ExportDocumentPdfRequest, context: Context
    ) -> document_service_pb2.ExportDocumentPdfResponse:
        task_id, status = await handlers.request_export(
            current_session(), self.deps.tasks, current_user_id(), request.document_id
        )
        return document_service_pb2.ExportDocumentPdfResponse(task_id=task_id, status=status)

    async def GenerateDocument(
        self, request: document_service_pb2.GenerateDocumentRequest, context: Context
    ) -> document_service_pb2.GenerateDocumentResponse:
        task_id, status = await handlers.request_generate(
            self.deps.tasks,
            self.deps.settings,
            current_user_id(),
            prompt=request.prompt,
            title=request.title,
        )
        return document_service_pb2.GenerateDocumentResponse(task_id=task_id, status=status)

    async def SummarizeDocument(
        self, request: document_service_pb2.SummarizeDocumentRequest, context: Context
    ) -> document_service_pb2.SummarizeDocumentResponse:
        task_id, status = await handlers.request_summary(
            current_session(), self.deps.tasks, current_user_id(), request.document_id
        )
        return document_service_pb2.SummarizeDocumentResponse(task_id=task_id, status=status)

    async def RewriteDocument(
        self, request: document_service_pb2.RewriteDocumentRequest, context: Context
    ) -> document_service_pb2.RewriteDocumentResponse:
        task_id, status = await handlers.request_rewrite(
            current_session(),
            self.deps.tasks,
            current_user_id(),
            request.document_id,
            instruction=request.instruction,
            etag=request.etag,
        )
        return document_service_pb2.RewriteDocumentResponse(task_id=task_id, status=status)
