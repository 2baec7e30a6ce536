"""The document service's own settings, on top of those every Folio process shares."""

from typing import Self

from pydantic import model_validator

from libs.config import Settings


class DocumentSettings(Settings):
    """Limits and timings of documents and attachments (``FOLIO_DOCUMENT_*``)."""

    document_max_title_chars: int = 300
    document_max_content_bytes: int = 1024 * 1024
    document_attachment_max_bytes: int = 25 * 1024 * 1024
    document_attachments_per_document: int = 100
    # How long a presigned upload and a download URL stay valid.
    document_upload_url_seconds: int = 900
    document_download_url_seconds: int = 300
    # An upload not completed within this long is swept with its object. Never before
    # its presigned upload expires, or bytes could arrive after the sweep.
    document_pending_upload_seconds: int = 24 * 3600
    # How often the service sweeps stale uploads and retries deletions of stored objects.
    document_sweep_seconds: float = 60.0

    @model_validator(mode="after")
    def _sweep_after_uploads_expire(self) -> Self:
        if self.document_pending_upload_seconds < self.document_upload_url_seconds:
            raise ValueError(
                "FOLIO_DOCUMENT_PENDING_UPLOAD_SECONDS must be at least "
                "FOLIO_DOCUMENT_UPLOAD_URL_SECONDS, so no upload lands after its sweep"
            )
        return self
