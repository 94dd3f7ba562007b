"""api_keys: authenticate as a user. Only a SHA-256 of the secret is stored (keys are
256-bit random, so a fast hash is enough); `prefix` is kept for display."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKeyConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import Base, Timestamps, UTCDateTime


class ApiKeyRow(Timestamps, Base):
    __tablename__ = "api_keys"
    __table_args__ = (ForeignKeyConstraint(["account_id", "user_id"], ["users.account_id", "users.user_id"]),)

    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(63), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    display_name: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked: Mapped[bool] = mapped_column(default=False, nullable=False)
