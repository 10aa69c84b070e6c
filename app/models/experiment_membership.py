from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class EvictionReason:
    """Why a member left the experiment's protocol (`evicted_reason`)."""

    OUT_OF_RANGE = "appointment_out_of_range"
    CANCELLED = "appointment_cancelled"
    # A reminder failed on every channel: the patient could not be reached at all.
    UNDELIVERABLE = "undeliverable"


class ExperimentMembership(Base):
    """A patient enrolled in an experiment, with the group the hash assigned.

    `active` is true while the experiment runs; the partial unique index on it is what
    keeps a patient in at most one running experiment. An evicted member stays a member
    (counted, with its reason) and gets the default plan from then on.
    """

    __tablename__ = "experiment_memberships"
    __table_args__ = (
        UniqueConstraint("experiment_id", "patient_id"),
        Index(
            "ix_experiment_memberships_one_running",
            "patient_id",
            unique=True,
            postgresql_where=text("active"),
        ),
        # Results and the per-patient report read one experiment's members in id order.
        Index("ix_experiment_memberships_experiment", "experiment_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    group_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("experiment_groups.id", ondelete="CASCADE")
    )
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    # The appointment that enrolled the patient: its date is the one returns count from.
    appointment_id: Mapped[str] = mapped_column(String(64))
    appointment_date: Mapped[date]
    enrolled_at: Mapped[datetime] = mapped_column(server_default=func.now())
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    evicted_at: Mapped[datetime | None]
    evicted_reason: Mapped[str | None] = mapped_column(String(50))
    # The patient's first visit since enrolment, and its day in the patient's time zone.
    visited_at: Mapped[datetime | None]
    visited_on: Mapped[date | None]
