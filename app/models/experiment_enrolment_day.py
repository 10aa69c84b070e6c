from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class ExperimentEnrolmentDay(Base):
    """How many patients an experiment enrolled on one UTC day: the daily cap's counter.

    Incremented with a conditional upsert, whose row lock makes the cap hold across
    any number of API processes.
    """

    __tablename__ = "experiment_enrolment_days"

    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(primary_key=True)
    enrolled: Mapped[int] = mapped_column(Integer)
