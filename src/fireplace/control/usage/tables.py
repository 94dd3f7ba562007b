"""inference_usage: one row per (account, UTC day, model) with running sums.

The gateway's meter (gateway/metering.py) adds to a row with an upsert every few seconds, so
several API servers may add to the same row; nothing else writes it. Rows outlive the model
and deployment they count (usage is history). The primary key leads with (account, day): the
read is always one account over a day range.
"""
from __future__ import annotations

from datetime import date, datetime, timezone

from sqlalchemy import BigInteger, Date, String
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import Base, UTCDateTime, utcnow


def utc_today() -> date:
    """The day a request completing now is counted on."""
    return datetime.now(timezone.utc).date()


class UsageRow(Base):
    __tablename__ = "inference_usage"

    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)          # UTC day the request completed
    model: Mapped[str] = mapped_column(String(300), primary_key=True)  # full model name (an addon's own)
    requests: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
