"""Stored objects of documents: their keys, and deletions that survive a storage outage.

Rows and objects are deleted apart: the transaction that deletes rows also records each
prefix whose objects must go (``object_deletions``); once it commits, storage deletes
them and the record goes. If storage is down, the record stays and the service's sweep
tries again, so no object outlives its rows for long and none is lost early.
"""

import asyncio
import datetime as dt
import logging

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db import Database, after_commit
from libs.storage import Storage, StorageError
from services.document.models import PENDING, Attachment, ObjectDeletion

log = logging.getLogger(__name__)
_SWEEP_BATCH = 100
# A pending upload's presigned URL is made just after its row, and clocks differ a little:
# the sweep waits this much longer than the upload can take.
_SWEEP_MARGIN_SECONDS = 5


def user_prefix(user_id: str) -> str:
    return f"users/{user_id}/"


def document_prefix(user_id: str, document_id: str) -> str:
    return f"{user_prefix(user_id)}documents/{document_id}/"


def attachment_key(user_id: str, document_id: str, attachment_id: str) -> str:
    return f"{document_prefix(user_id, document_id)}attachments/{attachment_id}"


def export_key(user_id: str, document_id: str, revision: int, render_key: str) -> str:
    return f"{document_prefix(user_id, document_id)}exports/{revision}-{render_key[:16]}.pdf"


class ObjectJanitor:
    """Deletes stored objects once the rows that named them are gone."""

    def __init__(self, database: Database, storage: Storage) -> None:
        self.database = database
        self.storage = storage

    def delete_after_commit(self, session: AsyncSession, prefix: str) -> None:
        """Record that ``prefix``'s objects must go, and delete them once ``session`` commits."""
        record = ObjectDeletion(prefix=prefix)
        session.add(record)

        async def delete_now() -> None:
            await self._delete(record.id, prefix)

        after_commit(session, delete_now)

    async def _delete(self, record_id: str, prefix: str) -> bool:
        try:
            deleted = await self.storage.delete_prefix(prefix)
        except StorageError as error:
            log.warning("cannot delete objects under %s yet: %s", prefix, error)
            async with self.database.session() as session:
                await session.execute(
                    update(ObjectDeletion)
                    .where(ObjectDeletion.id == record_id)
                    .values(attempts=ObjectDeletion.attempts + 1, last_error=str(error)[:500])
                )
            return False
        async with self.database.session() as session:
            await session.execute(delete(ObjectDeletion).where(ObjectDeletion.id == record_id))
        log.info("deleted %d objects under %s", deleted, prefix)
        return True

    async def sweep(self, *, pending_upload_seconds: int) -> None:
        """Retry recorded deletions and drop uploads never completed."""
        async with self.database.session() as session:
            age = pending_upload_seconds + _SWEEP_MARGIN_SECONDS
            stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
            abandoned = (
                await session.scalars(
                    select(Attachment)
                    .where(Attachment.status == PENDING, Attachment.created_at < stale)
                    .limit(_SWEEP_BATCH)
                )
            ).all()
            for attachment in abandoned:
                session.add(ObjectDeletion(prefix=attachment.object_key))
                await session.delete(attachment)
        if abandoned:
            log.info("swept %d uploads never completed", len(abandoned))
        async with self.database.session() as session:
            records = (
                await session.execute(
                    select(ObjectDeletion.id, ObjectDeletion.prefix)
                    .order_by(ObjectDeletion.id)
                    .limit(_SWEEP_BATCH)
                )
            ).all()
        for record_id, prefix in records:
            if not await self._delete(record_id, prefix):
                return  # storage is still down; the next sweep tries again

    async def run(self, interval: float, pending_upload_seconds: int) -> None:
        """Sweep now and every ``interval`` seconds while the service runs."""
        while True:
            try:
                await self.sweep(pending_upload_seconds=pending_upload_seconds)
            except Exception:
                log.exception("the storage sweep failed; it runs again later")
            await asyncio.sleep(interval)
