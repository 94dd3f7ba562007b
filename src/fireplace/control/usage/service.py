"""The metered rows of one account over a day range (the read side of gateway/metering.py).

    day_range("2026-11-01", None) -> (date(2026, 11, 1), <today, UTC>)
    model_usage(session, "acme", start, end) -> [UsageRow, ...] ordered by day, then model

Days are UTC and both ends are inclusive. Without a start the range is the 30 days ending at the
end (default: today); at most MAX_DAYS days are read at once.
"""
from __future__ import annotations

import re
from datetime import date, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from fireplace.control.usage.tables import UsageRow, utc_today
from fireplace.errors import InvalidArgument

DEFAULT_DAYS = 30
MAX_DAYS = 366
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


def parse_day(text: str, param: str) -> date:
    if not re.match(DATE_PATTERN, text):
        raise InvalidArgument(f"{param}: {text[:40]!r} is not a date (YYYY-MM-DD, UTC)", param=param)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"{param}: {text!r} is not a calendar date", param=param) from None


def day_range(start: str | None, end: str | None) -> tuple[date, date]:
    last = parse_day(end, "endDate") if end else utc_today()
    first = parse_day(start, "startDate") if start else last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise InvalidArgument(f"startDate {first} is after endDate {last}", param="startDate")
    if (last - first).days + 1 > MAX_DAYS:
        raise InvalidArgument(f"startDate..endDate: at most {MAX_DAYS} days at once ({first} to {last} is "
                              f"{(last - first).days + 1})", param="startDate")
    return first, last


def model_usage(session: Session, account_id: str, first: date, last: date) -> list[UsageRow]:
    return list(session.scalars(select(UsageRow).where(
        UsageRow.account_id == account_id, UsageRow.day >= first, UsageRow.day <= last)
        .order_by(UsageRow.day, UsageRow.model)))
