"""Declarative base and column helpers shared by every resource table.

Every resource row has (account_id, <id>) as primary key, create/update times, a free-form
JSON `spec` for the fields nobody filters on, and an `etag` bumped on every write.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both SQLite (which drops tzinfo) and PostgreSQL."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON}


class Timestamps:
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)
    etag: Mapped[int] = mapped_column(Integer, default=1, nullable=False)


class AccountScoped(Timestamps):
    # sort_order: account_id comes first in the table and the primary key, so
    # session.get(Row, (account_id, resource_id)) (control.common.fetch) finds the row.
    account_id: Mapped[str] = mapped_column(String(63), primary_key=True, sort_order=-1)
    display_name: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    created_by: Mapped[str] = mapped_column(String(320), default="", nullable=False)
