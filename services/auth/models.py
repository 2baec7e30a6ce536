"""The ``auth`` schema: sessions and the refresh tokens issued in them."""

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, LargeBinary, MetaData, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.db import Timestamps, UlidPrimaryKey

SCHEMA = "auth"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Session(UlidPrimaryKey, Timestamps, Base):
    """One sign-in on one device; its id is the ``sid`` claim of its access tokens."""

    __tablename__ = "sessions"

    user_id: Mapped[str] = mapped_column(String(26))
    refresh_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    ip_address: Mapped[str] = mapped_column(Text, default="")
    last_used_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    idle_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_reason: Mapped[str | None] = mapped_column(Text, default=None)


class RefreshToken(Base):
    """A refresh token ever issued, by SHA-256 hash."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    session_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("sessions.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
