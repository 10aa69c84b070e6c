from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin

APPOINTMENT_STATUSES = ("scheduled", "visited", "cancelled")


class Appointment(TimestampMixin, Base):
    """A clinic appointment; its reminders are notifications with its `appointment_id`."""

    __tablename__ = "appointments"
    __table_args__ = (CheckConstraint(f"status IN {APPOINTMENT_STATUSES}", name="status"),)

    # The clinic system's id.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), index=True
    )
    scheduled_date: Mapped[date]
    facility_id: Mapped[str | None] = mapped_column(String(64))
    facility_name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(10))
    # The plan its reminders were last scheduled from; None: no reminders.
    reminder_plan: Mapped[str | None] = mapped_column(String(100))
    # The experiment membership of the patient when the appointment was planned: its
    # reminders count for that membership's group, and stopping the experiment clears them.
    membership_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("experiment_memberships.id", ondelete="SET NULL"), index=True
    )
    # The earliest visit recorded, and its day in the patient's time zone.
    visited_at: Mapped[datetime | None]
    visited_on: Mapped[date | None]
    cancelled_at: Mapped[datetime | None]
