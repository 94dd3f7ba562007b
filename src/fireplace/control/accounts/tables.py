"""accounts: the top-level owner of every resource."""
from __future__ import annotations

from sqlalchemy import Boolean, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import Base, Timestamps

PUBLIC_ACCOUNT_ID = "fireplace"  # the public catalog, readable by every authenticated caller
ACCOUNT_TYPES = ("DEVELOPER", "ENTERPRISE")


class AccountRow(Timestamps, Base):
    __tablename__ = "accounts"
    # One account per sign-up email (the public catalog alone has none: "").
    __table_args__ = (UniqueConstraint("email", name="uq_accounts_email"),)

    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    display_name: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    account_type: Mapped[str] = mapped_column(String(32), default="DEVELOPER", nullable=False)
    state: Mapped[str] = mapped_column(String(32), default="READY", nullable=False)
    suspend_state: Mapped[str] = mapped_column(String(32), default="UNSUSPENDED", nullable=False)
    is_public: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
