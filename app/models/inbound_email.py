from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class InboundOutcome(enum.StrEnum):
    # Filed on its conversation as a message (`message_id`).
    ATTACHED = "attached"
    # Kept here only, never on a conversation: `reason` says why.
    UNMATCHED = "unmatched"
    # A delivery status notification, applied to the addresses it names.
    BOUNCE = "bounce"


class InboundEmail(TimestampMixin, Base):
    """Every email that reached the SMTP receiver or the inbound-parse webhook, once
    (`dedup_key`: its Message-ID hashed; SMTP and webhooks retry).

    Attachments are kept by reference only (name, type, size, SHA-256), never their
    bytes. `conversation_id` is the conversation a valid reply token named, also when
    the sender did not match and the message was not attached.
    """

    __tablename__ = "inbound_emails"
    __table_args__ = (
        CheckConstraint(f"outcome IN {tuple(o.value for o in InboundOutcome)}", name="outcome"),
        Index(
            "ix_inbound_emails_unmatched",
            "received_at",
            "id",
            postgresql_where=sql("outcome = 'unmatched'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    # `smtp` or `inbound_parse`.
    via: Mapped[str] = mapped_column(String(20))
    outcome: Mapped[str] = mapped_column(String(12))
    # Why unmatched: bad_token, unknown_sender, no_sender, several_senders, auto_reply,
    # not_a_reply, unverified_bounce.
    reason: Mapped[str | None] = mapped_column(String(40))
    rfc_message_id: Mapped[str | None] = mapped_column(Text)
    sender: Mapped[str | None] = mapped_column(String(254))
    # The reply or bounce address it came to, when it came to one.
    recipient: Mapped[str | None] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(300))
    # The reply without its quote and signature.
    text: Mapped[str] = mapped_column(Text)
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, server_default=sql("'[]'::jsonb")
    )
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    defects: Mapped[list[str]] = mapped_column(JSONB, server_default=sql("'[]'::jsonb"))
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL")
    )
    message_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="SET NULL")
    )
    received_at: Mapped[datetime]
