from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class ConversationState(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Conversation(TimestampMixin, Base):
    """A topic of exchange with one patient: opened by the clinic system, or by a patient
    writing about something new. Closed by the API or after CONVERSATION_IDLE_DAYS."""

    __tablename__ = "conversations"
    __table_args__ = (
        CheckConstraint(f"state IN {tuple(s.value for s in ConversationState)}", name="state"),
        # A patient's open conversations, most recently active first (routing a reply).
        Index(
            "ix_conversations_patient_open",
            "patient_id",
            "last_activity_at",
            postgresql_where=text("state = 'open'"),
        ),
        # The idle sweep.
        Index(
            "ix_conversations_idle",
            "last_activity_at",
            postgresql_where=text("state = 'open'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(200))
    # The clinic system's own id of what this is about (an appointment, a case).
    reference: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(10))
    last_activity_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    # `api` or `idle`.
    close_reason: Mapped[str | None] = mapped_column(String(20))


class ConversationRouting(TimestampMixin, Base):
    """One row per patient who has written in: the lock that serialises routing their
    messages, and the open question when a reply could belong to several conversations.

    `pending_message_id` is the message waiting to be filed; `options` the conversation
    ids offered as 2..n, in the order shown; `asks` how many times the list was sent.
    """

    __tablename__ = "conversation_routings"

    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True
    )
    pending_message_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="SET NULL")
    )
    options: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    asks: Mapped[int] = mapped_column(Integer, server_default=text("0"))
