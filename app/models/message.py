from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class Message(TimestampMixin, Base):
    """One message of a two-way exchange with a patient, as a provider handed it over.

    Inbound messages are kept even when their sender matches no patient (`patient_id`
    NULL: unmatched). Providers retry their webhooks: `(channel, provider_message_id)`
    is unique, so a repeat stores nothing. Media stay with the provider: only their type
    and the provider's media id are kept.
    """

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(f"direction IN {tuple(d.value for d in Direction)}", name="direction"),
        UniqueConstraint("channel", "provider_message_id"),
        Index("ix_messages_patient_received", "patient_id", "received_at", "id"),
        Index(
            "ix_messages_unmatched",
            "received_at",
            postgresql_where=sql("patient_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    direction: Mapped[str] = mapped_column(String(3))
    channel: Mapped[str] = mapped_column(String(20))
    provider_message_id: Mapped[str] = mapped_column(String(100))
    # The patient's side of the exchange: the sender of an inbound message, in E.164.
    phone_e164: Mapped[str] = mapped_column(String(20))
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id", ondelete="SET NULL"))
    text: Mapped[str | None] = mapped_column(Text)
    # [{"type": "image/jpeg", "provider_media_id": "ME..."}]
    media: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=sql("'[]'::jsonb"))
    received_at: Mapped[datetime]
