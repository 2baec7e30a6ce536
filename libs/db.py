"""Async SQLAlchemy over psycopg: engines, one session per RPC, and ``get_db_context()``."""

import contextvars
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import DateTime, String, func
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Mapped, mapped_column

from libs.embedded import sqlalchemy_url
from libs.ids import new_id

db_session_var: contextvars.ContextVar[AsyncSession | None] = contextvars.ContextVar(
    "db_session", default=None
)


class Database:
    """One engine and its session factory; a process has one per database it uses."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.engine: AsyncEngine = create_async_engine(
            sqlalchemy_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session committed on exit and rolled back on an exception."""
        async with self._sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def dispose(self) -> None:
        await self.engine.dispose()


def current_session() -> AsyncSession:
    """The session of the current RPC (opened by DbSessionInterceptor)."""
    session = db_session_var.get()
    if session is None:
        raise RuntimeError("no database session: is DbSessionInterceptor installed?")
    return session


_default: Database | None = None


def configure_default_database(database: Database) -> None:
    """Set the database that ``get_db_context()`` uses (the worker does this at start)."""
    global _default
    _default = database


@asynccontextmanager
async def get_db_context() -> AsyncIterator[AsyncSession]:
    """A session for code outside an RPC (tasks): commit on exit, roll back on exception."""
    if _default is None:
        raise RuntimeError("no default database: call configure_default_database() first")
    async with _default.session() as session:
        yield session


class UlidPrimaryKey:
    """A ULID ``id`` primary key, made on insert."""

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)


class Timestamps:
    """``created_at`` / ``updated_at`` kept by the database."""

    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
