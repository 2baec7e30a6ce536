"""The ``users`` schema."""

from typing import Any

from sqlalchemy import MetaData, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.db import Timestamps, UlidPrimaryKey

SCHEMA = "users"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class User(UlidPrimaryKey, Timestamps, Base):
    __tablename__ = "users"

    google_sub: Mapped[str] = mapped_column(Text, unique=True)
    email: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str] = mapped_column(Text, default="")
    picture_url: Mapped[str] = mapped_column(String, default="")
    is_premium: Mapped[bool] = mapped_column(default=False)
    is_admin: Mapped[bool] = mapped_column(default=False)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
