from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class EmailStatus(enum.StrEnum):
    DELIVERABLE = "deliverable"
    # A hard bounce, a complaint or an unsubscribe: nothing is sent to it until an
    # explicit DELETE /v1/email-status/{address}.
    BLOCKED = "blocked"
    UNKNOWN = "unknown"


class EmailAddress(TimestampMixin, Base):
    """What we know of an address's deliverability. No row: `unknown`."""

    __tablename__ = "email_addresses"
    __table_args__ = (
        CheckConstraint(f"status IN {tuple(s.value for s in EmailStatus)}", name="status"),
    )

    # Normalised (app/email/addresses.py): lower case.
    address: Mapped[str] = mapped_column(String(254), primary_key=True)
    status: Mapped[str] = mapped_column(String(12))
    # Why it has that status (a bounce's diagnostic, "spam complaint", ...).
    reason: Mapped[str | None] = mapped_column(String(300))
    changed_at: Mapped[datetime]
    # The last explicit unblock: an event that happened before it does not block again.
    unblocked_at: Mapped[datetime | None]


class EmailAddressEvent(Base):
    """The history of an address: every provider event and bounce about it, and every
    unblock, with the status it left."""

    __tablename__ = "email_address_events"
    __table_args__ = (Index("ix_email_address_events_address", "address", "occurred_at", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    address: Mapped[str] = mapped_column(
        String(254), ForeignKey("email_addresses.address", ondelete="CASCADE")
    )
    # delivered, hard_bounce, soft_bounce, dropped, complaint, unsubscribe, unblocked.
    event: Mapped[str] = mapped_column(String(20))
    # sendgrid, dsn or api.
    source: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(12))
    detail: Mapped[str | None] = mapped_column(String(300))
    # The provider's id of the event (SendGrid's sg_event_id; a DSN's message and
    # recipient): a repeat is stored once.
    provider_event_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(server_default=func.now())
