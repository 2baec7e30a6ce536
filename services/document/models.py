"""The ``documents`` schema."""

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Computed,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.db import Timestamps, UlidPrimaryKey

SCHEMA = "documents"
PENDING = "pending"
READY = "ready"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Document(UlidPrimaryKey, Timestamps, Base):
    __tablename__ = "documents"

    user_id: Mapped[str] = mapped_column(String(26))
    title: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text, default="")
    revision: Mapped[int] = mapped_column(BigInteger, default=1)
    etag: Mapped[str] = mapped_column(Text)
    word_count: Mapped[int] = mapped_column(BigInteger, default=0)
    summary: Mapped[str] = mapped_column(Text, default="")
    # Kept by PostgreSQL (see the migration); read only in searches.
    search: Mapped[Any] = mapped_column(TSVECTOR, Computed("search", persisted=True), deferred=True)


class Revision(Base):
    __tablename__ = "revisions"

    document_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(Text)
    restored_from: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    word_count: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Attachment(UlidPrimaryKey, Timestamps, Base):
    __tablename__ = "attachments"

    document_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("documents.id", ondelete="CASCADE")
    )
    user_id: Mapped[str] = mapped_column(String(26))
    filename: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text, default=PENDING)
    object_key: Mapped[str] = mapped_column(Text)


class Export(Base):
    __tablename__ = "exports"

    document_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    render_key: Mapped[str] = mapped_column(Text, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(Text)
    pages: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class ObjectDeletion(UlidPrimaryKey, Timestamps, Base):
    __tablename__ = "object_deletions"

    prefix: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
