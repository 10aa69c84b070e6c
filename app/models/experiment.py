from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import CheckConstraint, Integer, String
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class Experiment(TimestampMixin, Base):
    """An A/B test of reminder plans. It runs from `start_date` to `end_date` (UTC days)
    unless stopped; its groups are `experiment_groups`, its patients
    `experiment_memberships`."""

    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint("end_date >= start_date", name="dates"),
        CheckConstraint("max_patients_per_day IS NULL OR max_patients_per_day > 0", name="cap"),
        CheckConstraint("return_window_days >= 0", name="return_window"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    start_date: Mapped[date]
    end_date: Mapped[date]
    max_patients_per_day: Mapped[int | None] = mapped_column(Integer)
    # None: every country / facility.
    countries: Mapped[list[str] | None] = mapped_column(ARRAY(String(2)))
    facility_ids: Mapped[list[str] | None] = mapped_column(ARRAY(String(64)))
    return_window_days: Mapped[int] = mapped_column(Integer)
    stopped_at: Mapped[datetime | None]
