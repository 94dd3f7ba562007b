"""First start on an empty data dir: the public catalog account, the first account (ID from
FIREPLACE_ADMIN_EMAIL), its admin user (also platform admin) and an API key written to
<data dir>/credentials (mode 0600); the log names that file, never the key. Later starts
change nothing."""
from __future__ import annotations

import os
import re
import sys

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fireplace.config import Settings
from fireplace.control.accounts.tables import PUBLIC_ACCOUNT_ID, AccountRow
from fireplace.control.api_keys.secrets import new_key, new_key_id
from fireplace.control.api_keys.tables import ApiKeyRow
from fireplace.control.users.tables import UserRow
from fireplace.ids import account_id_from_email, is_valid_id


def user_id_from_email(email: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", email.split("@", 1)[0].lower()).strip("-")[:63].rstrip("-")
    return slug if is_valid_id(slug) else "admin"


def bootstrap_platform(settings: Settings, factory: sessionmaker[Session]) -> None:
    with factory() as session:
        if session.get(AccountRow, PUBLIC_ACCOUNT_ID) is not None:
            return
        email = settings.admin_email
        account_id = account_id_from_email(email)
        session.add(AccountRow(account_id=PUBLIC_ACCOUNT_ID, display_name="Fireplace public catalog",
                               account_type="ENTERPRISE", is_public=True))
        session.add(AccountRow(account_id=account_id, email=email, display_name=email,
                               account_type="DEVELOPER"))
        session.flush()
        user_id = user_id_from_email(email)
        session.add(UserRow(account_id=account_id, user_id=user_id, email=email, display_name=email,
                            role="admin", is_platform_admin=True))
        session.flush()
        key = new_key(settings.api_key)
        session.add(ApiKeyRow(account_id=account_id, key_id=new_key_id(), user_id=user_id,
                              key_hash=key.key_hash, prefix=key.prefix, display_name="bootstrap"))
        try:
            session.commit()
        except Exception:
            # Another server started at the same time and won the race: keep its rows.
            session.rollback()
            if session.scalar(select(AccountRow).where(AccountRow.account_id == PUBLIC_ACCOUNT_ID)):
                return
            raise
    write_credentials(settings, account_id, key.secret)
    # The key itself never goes to the log (logs are often shared or shipped): only where it is.
    origin = "from FIREPLACE_API_KEY" if settings.api_key else "generated"
    print(f"Fireplace: created account {account_id!r}; its admin API key ({origin}) is in "
          f"{settings.credentials_path} (mode 0600)", file=sys.stderr, flush=True)


def write_credentials(settings: Settings, account_id: str, secret: str) -> None:
    path = settings.credentials_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"FIREPLACE_ACCOUNT_ID={account_id}\nFIREPLACE_API_KEY={secret}\n"
                f"FIREPLACE_BASE_URL={settings.base_url}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    os.chmod(path, 0o600)
