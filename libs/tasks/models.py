"""The ``tasks`` schema: written by the task service and by the worker runtime.

Both are the task domain: the service records and relays tasks, the runtime records
each attempt, so they share one definition of the tables.
"""

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, DateTime, MetaData, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.db import Timestamps, UlidPrimaryKey

SCHEMA = "tasks"

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
FINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED})


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Task(UlidPrimaryKey, Timestamps, Base):
    __tablename__ = "tasks"

    user_id: Mapped[str | None] = mapped_column(String(26))
    kind: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    status: Mapped[str] = mapped_column(Text, default=PENDING)
    progress: Mapped[int] = mapped_column(default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Outbox(Base):
    """A task message not yet handed to the broker."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(26))
    kind: Mapped[str] = mapped_column(Text)
    available_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
