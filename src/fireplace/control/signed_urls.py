"""Signed, expiring URLs for our own upload/download endpoints (what Fireworks' signed
GCS URLs are to its SDK). The HMAC secret lives in the DB so every API server shares it.

    sign(session, "PUT", "/v1/uploads/models/a/m/config.json", ttl_s=3600, binding=...) -> "expires=...&sig=..."
    verify(session, "PUT", path, expires, sig, binding=...)  -> raises PermissionDenied when bad or expired
    mac(session, "page-token", b"...")  -> hex HMAC for other tamper-evident tokens
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from sqlalchemy import String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from fireplace.db.base import Base
from fireplace.errors import PermissionDenied

SECRET_ID = "url-signing"
DEFAULT_TTL_S = 3600
_HEX_SIG = re.compile(r"^[0-9a-f]{64}$")
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


def mac(session: Session, purpose: str, message: bytes) -> str:
    """HMAC-SHA256 (hex) of `message` under the platform secret, separated by purpose
    (signed URLs, page tokens ...), so a MAC made for one use never passes for another."""
    return hmac.new(_secret(session), purpose.encode() + b"\x00" + message, hashlib.sha256).hexdigest()


def _url_mac(session: Session, method: str, path: str, expires: int, binding: str) -> str:
    return mac(session, "url", f"{method.upper()}\n{path}\n{expires}\n{binding}".encode())


def sign(session: Session, method: str, path: str, ttl_s: int = DEFAULT_TTL_S, *, binding: str = "") -> str:
    """Query string (without '?') that authorizes `method` on `path` until now + ttl_s.
    `binding` ties the URL to one resource instance (its create time) and, for writes, to
    one upload nonce: the server recomputes it, so a URL of a deleted-and-recreated resource
    or of a consumed upload no longer verifies."""
    expires = int(time.time()) + ttl_s
    return f"expires={expires}&sig={_url_mac(session, method, path, expires, binding)}"


def verify(session: Session, method: str, path: str, expires: str | int | None, sig: str | None, *,
           binding: str = "") -> None:
    exp = int(expires) if isinstance(expires, str) and expires.isascii() and expires.isdigit() \
        and len(expires) <= 12 else expires if isinstance(expires, int) else 0
    if not sig or exp < time.time():
        raise PermissionDenied("upload/download URL is missing its signature or has expired")
    if not _HEX_SIG.fullmatch(sig) or not hmac.compare_digest(
            _url_mac(session, method, path, exp, binding), sig):
        raise PermissionDenied("upload/download URL signature is invalid")


def instance_binding(create_time) -> str:
    """A resource instance's identity for URL binding: its creation time (microseconds)."""
    return f"{create_time.timestamp():.6f}" if create_time is not None else ""
