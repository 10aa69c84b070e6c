from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class ReminderPlan(TimestampMixin, Base):
    """When, relative to an appointment's date, which reminders go out.

    `reminders` is `[{"offset_days": -1, "template": "appointment_reminder.basic"}, ...]`,
    in offset order. At most one plan is the default (a partial unique index).
    """

    __tablename__ = "reminder_plans"
    __table_args__ = (
        Index("ix_reminder_plans_one_default", "is_default", unique=True,
              postgresql_where=text("is_default")),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    reminders: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
