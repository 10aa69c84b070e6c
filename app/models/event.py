from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class Event(TimestampMixin, Base):
    """Something that happened to a patient in the clinic system (a registration, a
    completed visit), under the clinic system's own id; trigger rules turn it into
    notifications."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(50))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    staff_id: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    voided_at: Mapped[datetime | None]
    # {rule name: message} of the rules that failed at the latest evaluation.
    rule_errors: Mapped[dict[str, str]] = mapped_column(JSONB)
