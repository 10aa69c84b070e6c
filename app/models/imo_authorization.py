from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin

IMO_AUTHORIZATION_STATUSES = ("invited", "subscribed", "not_subscribed", "no_imo_account")


class ImoAuthorization(TimestampMixin, Base):
    """Whether Imo will deliver to a patient: one row per patient, at most."""

    __tablename__ = "imo_authorizations"
    __table_args__ = (
        CheckConstraint(f"status IN {IMO_AUTHORIZATION_STATUSES}", name="status"),
        # The dashboard's acceptance over time: invitations per day, by this column.
        Index(
            "ix_imo_authorizations_last_invited_at",
            "last_invited_at",
            postgresql_where=text("last_invited_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[str] = mapped_column(String(20))
    last_invited_at: Mapped[datetime | None]
    subscribed_at: Mapped[datetime | None]
