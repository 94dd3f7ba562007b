"""What an account's datasets use, for quotas (counted from the live rows, so it never drifts)."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fireplace.control.datasets.tables import DatasetRow


def dataset_bytes(session: Session, account_id: str) -> int:
    """Bytes of the account's uploaded dataset files (READY datasets; an UPLOADING one holds 0)."""
    total = session.scalar(select(func.coalesce(func.sum(DatasetRow.size_bytes), 0))
                           .where(DatasetRow.account_id == account_id))
    return int(total or 0)
