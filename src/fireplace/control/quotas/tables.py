"""quotas: per-account overrides of the default limits (a missing row means the default)."""
from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import Base, Timestamps


class QuotaRow(Timestamps, Base):
    __tablename__ = "quotas"

    account_id: Mapped[str] = mapped_column(String(63), ForeignKey("accounts.account_id"), primary_key=True)
    quota_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    max_value: Mapped[int] = mapped_column(BigInteger, nullable=False)
