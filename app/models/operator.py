from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base

OPERATOR_ROLES = ("viewer", "support", "admin")


class Operator(Base):
    """A person who uses the dashboard. Only the Argon2 hash of the password is stored."""

    __tablename__ = "operators"
    __table_args__ = (
        CheckConstraint("role IN ('viewer', 'support', 'admin')", name="role"),
        CheckConstraint("email = lower(email)", name="email_lower"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # Set by `notify operators revoke`: the operator can no longer log in.
    disabled_at: Mapped[datetime | None]


class OperatorSession(Base):
    """A logged-in browser. The cookie carries the token; only its SHA-256 is stored, so
    a leaked table opens nothing, and revoking is setting `revoked_at`."""

    __tablename__ = "operator_sessions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    operator_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
