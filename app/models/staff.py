from __future__ import annotations

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class StaffMember(TimestampMixin, Base):
    """A clinic staff user, as the clinic system knows them: reached by email only.

    The email is stored normalised (app/email_address.py): its domain is lower case, so
    that a reply's sender or a bounce matches it exactly.
    """

    __tablename__ = "staff"
    __table_args__ = (
        CheckConstraint(
            "split_part(email, '@', 2) = lower(split_part(email, '@', 2))",
            name="email_domain_lower",
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254), index=True)
    locale: Mapped[str] = mapped_column(String(20))
