"""A lease row in the DB: only its holder reconciles, so two servers never both act.

try_acquire() inserts the row, renews it when we hold it, or takes it over once expired, in
one transaction with a compare-and-set on (holder, expire_time); it returns True while held.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fireplace.db.base import utcnow
from fireplace.orchestration.tables import LeaseRow


class Lease:
    def __init__(self, factory: sessionmaker[Session], name: str, holder: str, ttl_s: float = 10.0):
        self.factory, self.name, self.holder, self.ttl = factory, name, holder, timedelta(seconds=ttl_s)

    def try_acquire(self) -> bool:
        now = utcnow()
        with self.factory() as session:
            row = session.get(LeaseRow, self.name)
            if row is None:
                session.add(LeaseRow(name=self.name, holder=self.holder, expire_time=now + self.ttl))
                try:
                    session.commit()
                    return True
                except IntegrityError:
                    session.rollback()
                    return False
            if row.holder != self.holder and row.expire_time > now:
                return False
            result = session.execute(update(LeaseRow).where(
                LeaseRow.name == self.name, LeaseRow.holder == row.holder, LeaseRow.expire_time == row.expire_time)
                .values(holder=self.holder, expire_time=now + self.ttl))
            session.commit()
            return result.rowcount == 1

    def release(self) -> None:
        with self.factory() as session:
            session.execute(update(LeaseRow).where(LeaseRow.name == self.name, LeaseRow.holder == self.holder)
                            .values(expire_time=utcnow()))
            session.commit()
