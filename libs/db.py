"""Async SQLAlchemy over psycopg: engines, one session per RPC, and ``get_db_context()``.

Side effects outside the database (Redis, object storage, queueing a task) are registered
with :func:`after_commit` and run once the session's transaction has committed; a
rolled-back transaction drops them. Handlers never commit by hand.
"""

import contextvars
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy import DateTime, String, func
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Mapped, mapped_column

from libs.errors import FolioError
from libs.ids import new_id
from libs.urls import sqlalchemy_url

_AFTER_COMMIT = "folio.after_commit"
AfterCommit = Callable[[], Awaitable[object]]

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
            except FolioError as error:
                if error.keep_changes:
                    await commit(session)
                else:
                    await _rollback(session)
                raise
            except BaseException:
                await _rollback(session)
                raise
            await commit(session)

    async def dispose(self) -> None:
        await self.engine.dispose()


def after_commit(session: AsyncSession, action: AfterCommit) -> None:
    """Run ``action`` once ``session``'s current transaction commits; never if it rolls back."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


async def commit(session: AsyncSession) -> None:
    """Commit, then run the side effects registered for this transaction, in order.

    Also how a long call ends a read's transaction early, so it holds no connection while
    it waits.
    """
    await session.commit()
    actions: list[AfterCommit] = session.info.pop(_AFTER_COMMIT, [])
    for action in actions:
        await action()


async def _rollback(session: AsyncSession) -> None:
    session.info.pop(_AFTER_COMMIT, None)
    await session.rollback()


def current_session() -> AsyncSession:
    """The session of the current RPC (opened by the server chain)."""
    session = db_session_var.get()
    if session is None:
        raise RuntimeError("no database session: is the call served by ServerChain?")
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
