from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class TriggerRule(TimestampMixin, Base):
    """When an event of `event_type` whose `condition` holds schedules a message, and
    with which parameters (CEL expressions over `event` and `patient`)."""

    __tablename__ = "trigger_rules"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(50), index=True)
    condition: Mapped[str] = mapped_column(Text)
    # {"days": int, "hours": int, "at": "HH:MM" | null}
    send_at: Mapped[dict[str, Any]] = mapped_column(JSONB)
    template: Mapped[str] = mapped_column(String(100))
    # {template variable: CEL expression}
    parameters: Mapped[dict[str, str]] = mapped_column(JSONB)
    recipient: Mapped[str] = mapped_column(String(20))
    purpose: Mapped[str] = mapped_column(String(50))
    active: Mapped[bool] = mapped_column(Boolean)
