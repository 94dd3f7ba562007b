"""One lock per account for the checks that count and then write.

Quotas (deployments, replicas, loaded addons, concurrent jobs, dataset bytes, keys per user)
and invariants ("one default deployed model per model", "an account keeps an admin") are
read-count-write sequences; two concurrent requests could both pass the count. Every such
write path calls `serialize_account(session, account_id)` first, in its transaction:

  PostgreSQL: SELECT ... FROM accounts WHERE account_id = ? FOR NO KEY UPDATE -- a row lock
              held to commit (NO KEY: inserts that only reference the account still pass);
              READ COMMITTED, so every later statement sees what the previous holder wrote.
  SQLite:     a no-op UPDATE of that row, the transaction's first write: it takes the
              database's write lock at once (what BEGIN IMMEDIATE does) and waits for the
              previous writer, so the counts after it are current.

Reads take no lock. Keep blob I/O out of these transactions (they hold SQLite's one writer
lock): stage bytes first, then lock, check and publish.
"""
from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from fireplace.errors import not_found


def serialize_account(session: Session, account_id: str) -> None:
    """Block until this transaction is the only writer of `account_id`'s counted state."""
    from fireplace.control.accounts.tables import AccountRow

    if session.get_bind().dialect.name == "sqlite":
        found = session.execute(text("UPDATE accounts SET etag = etag WHERE account_id = :a"),
                                {"a": account_id}).rowcount
    else:
        found = session.execute(select(AccountRow.account_id).where(AccountRow.account_id == account_id)
                                .with_for_update(key_share=True)).first() is not None
    if not found:
        raise not_found("account", f"accounts/{account_id}")
