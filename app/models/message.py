from __future__ import annotations

import enum
import uuid
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


# An answer of the service's own (audience `reply`) sent outside the provider's webhook
# response: `pending` until a worker takes it, `sending` while it does (a worker killed
# then leaves it there: never sent twice), then `sent` or `failed` (`failure_reason`).
SEND_STATES = ("pending", "sending", "sent", "failed")


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
        CheckConstraint(f"send_state IN {SEND_STATES}", name="send_state"),
        # The workers' cron looks for answers never queued.
        Index(
            "ix_messages_pending_answers",
            "updated_at",
            postgresql_where=sql("send_state = 'pending'"),
        ),
        UniqueConstraint("channel", "provider_message_id"),
        Index("ix_messages_patient_received", "patient_id", "received_at", "id"),
        Index("ix_messages_conversation", "conversation_id", "received_at", "id"),
        # The dispatcher's claim: the conversation a staff message's notification carries.
        Index(
            "ix_messages_notification",
            "notification_id",
            postgresql_where=sql("notification_id IS NOT NULL"),
        ),
        Index(
            "ix_messages_unmatched",
            "received_at",
            postgresql_where=sql("patient_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    direction: Mapped[str] = mapped_column(String(3))
    # None for a staff note, or a staff message not sent yet.
    channel: Mapped[str | None] = mapped_column(String(20))
    # None for a staff message or note, which no provider has seen yet.
    provider_message_id: Mapped[str | None] = mapped_column(String(100))
    # The patient's side of the exchange: the sender of an inbound message, in E.164.
    phone_e164: Mapped[str | None] = mapped_column(String(20))
    # Outgoing: `note` (staff only) or `patient` (sent through a notification).
    audience: Mapped[str | None] = mapped_column(String(10))
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id", ondelete="SET NULL"))
    text: Mapped[str | None] = mapped_column(Text)
    # [{"type": "image/jpeg", "provider_media_id": "ME..."}]
    media: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=sql("'[]'::jsonb"))
    # When the service got it: from the provider, or from staff.
    received_at: Mapped[datetime]
    # The conversation it was filed on; None while a disambiguation holds it, or for
    # a keyword or an answer to the numbered list.
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL")
    )
    # An outgoing message: the notification that carries it to the patient.
    notification_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("notifications.id", ondelete="SET NULL")
    )
    # An answer of the service's own (audience `reply`): where its send stands, and why
    # it failed. None for every other message.
    send_state: Mapped[str | None] = mapped_column(String(10))
    failure_reason: Mapped[str | None] = mapped_column(Text)
