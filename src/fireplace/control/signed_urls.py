"""Signed, expiring URLs for our own upload/download endpoints (what Fireworks' signed
GCS URLs are to its SDK). The HMAC secret lives in the DB so every API server shares it.

    sign(session, "PUT", "/v1/uploads/models/a/m/config.json", ttl_s=3600) -> "expires=...&sig=..."
    verify(session, "PUT", path, expires, sig)  -> raises PermissionDenied when bad or expired
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from fireplace.db.base import Base
from fireplace.errors import PermissionDenied

SECRET_ID = "url-signing"
DEFAULT_TTL_S = 3600
_cache: dict[str, bytes] = {}


class PlatformSecretRow(Base):
    __tablename__ = "platform_secrets"

    secret_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(128), nullable=False)


def _secret(session: Session) -> bytes:
    bind_key = str(session.get_bind().url)
    if bind_key in _cache:
        return _cache[bind_key]
    row = session.get(PlatformSecretRow, SECRET_ID)
    if row is None:
        try:
            with session.begin_nested():
                session.add(PlatformSecretRow(secret_id=SECRET_ID, value=secrets.token_hex(32)))
            session.commit()
        except IntegrityError:  # another server created it first
            session.rollback()
        row = session.get(PlatformSecretRow, SECRET_ID)
    _cache[bind_key] = bytes.fromhex(row.value)
    return _cache[bind_key]


def _mac(secret: bytes, method: str, path: str, expires: int) -> str:
    return hmac.new(secret, f"{method.upper()}\n{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def sign(session: Session, method: str, path: str, ttl_s: int = DEFAULT_TTL_S) -> str:
    """Query string (without '?') that authorizes `method` on `path` until now + ttl_s."""
    expires = int(time.time()) + ttl_s
    return f"expires={expires}&sig={_mac(_secret(session), method, path, expires)}"


def verify(session: Session, method: str, path: str, expires: str | int | None, sig: str | None) -> None:
    try:
        exp = int(expires or 0)
    except ValueError:
        exp = 0
    if not sig or exp < time.time():
        raise PermissionDenied("upload/download URL is missing its signature or has expired")
    if not hmac.compare_digest(_mac(_secret(session), method, path, exp), sig):
        raise PermissionDenied("upload/download URL signature is invalid")
