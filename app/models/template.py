from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class Template(TimestampMixin, Base):
    """A message text in one locale, with `{named}` variables."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("key", "locale"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(String(100))
    locale: Mapped[str] = mapped_column(String(20))
    # The heading some channels show above the text (Imo's `title`).
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    # The pre-approved WhatsApp template this text is sent as, outside the customer-service
    # window: {"name", "language", "parameters": [variable names in body order],
    # "content_sid" (Twilio)}. None: this template is not sent on WhatsApp.
    whatsapp: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
