from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class Switch(TimestampMixin, Base):
    """A pause on sending for a scope (app/switches/scope.py), with who changed it last,
    when and why. Resuming keeps the row (paused false), so the last change stays known."""

    __tablename__ = "switches"

    # The canonical spelling of the scope; country, channel and purpose are its parts.
    scope: Mapped[str] = mapped_column(String(120), primary_key=True)
    country: Mapped[str | None] = mapped_column(String(2))
    channel: Mapped[str | None] = mapped_column(String(20))
    purpose: Mapped[str | None] = mapped_column(String(50))
    paused: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str] = mapped_column(String(200))
    changed_at: Mapped[datetime]
