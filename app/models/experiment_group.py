from __future__ import annotations

import uuid

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    SmallInteger,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class ExperimentGroup(Base):
    """One arm of an experiment. Position 0 is the control; no plan: no reminders."""

    __tablename__ = "experiment_groups"
    __table_args__ = (
        UniqueConstraint("experiment_id", "position"),
        UniqueConstraint("experiment_id", "name", name="uq_experiment_groups_experiment_name"),
        CheckConstraint("weight > 0", name="weight"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(SmallInteger)
    name: Mapped[str] = mapped_column(String(50))
    weight: Mapped[float] = mapped_column(Float)
    reminder_plan: Mapped[str | None] = mapped_column(ForeignKey("reminder_plans.name"))
