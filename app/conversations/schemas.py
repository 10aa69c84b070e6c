"""Wire shapes of conversations and their messages."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, Field

from app.models import Conversation, Message
from app.validation import InputModel


class ConversationIn(InputModel):
    patient_id: str = Field(min_length=1, max_length=64)
    subject: str = Field(
        min_length=1,
        max_length=200,
        description="What it is about; the patient sees its start in the numbered list.",
        examples=["Your visit on 12 December"],
    )
    reference: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The clinic system's own id of what this is about",
    )


class ConversationOut(BaseModel):
    id: uuid.UUID
    patient_id: str
    subject: str
    reference: str | None
    state: Literal["open", "closed"]
    created_at: datetime
    last_activity_at: datetime
    closed_at: datetime | None
    close_reason: str | None = Field(description="`api` or `idle`")

    @classmethod
    def from_model(cls, c: Conversation) -> Self:
        return cls(
            id=c.id,
            patient_id=c.patient_id,
            subject=c.subject,
            reference=c.reference,
            state="open" if c.state == "open" else "closed",
            created_at=c.created_at,
            last_activity_at=c.last_activity_at,
            closed_at=c.closed_at,
            close_reason=c.close_reason,
        )


class MessageOut(BaseModel):
    id: int
    direction: Literal["in", "out"]
    channel: str | None
    conversation_id: uuid.UUID | None
    text: str | None
    media: list[dict[str, Any]] = Field(description="Type and provider media id, by reference")
    at: datetime = Field(description="When the service got it: from the patient, or staff")
    audience: str | None = Field(
        description="Outgoing: `note` (staff only), `patient` (staff to the patient), or "
        "`reply` (the service's own answer: a consent confirmation, the help text, the "
        "numbered list, sent on WhatsApp Cloud API by a worker)"
    )
    notification_id: uuid.UUID | None
    delivery_state: str | None = Field(
        description="Outgoing to the patient: the state of the notification carrying it; "
        "for a `reply`, its send: `pending`, `sending`, `sent` or `failed`"
    )
    failure_reason: str | None = Field(
        default=None, description="A `reply` that failed: why (the provider's code and words)"
    )

    @classmethod
    def from_model(cls, m: Message, delivery_state: str | None) -> Self:
        return cls(
            id=m.id,
            direction="in" if m.direction == "in" else "out",
            channel=m.channel,
            conversation_id=m.conversation_id,
            text=m.text,
            media=m.media,
            at=m.received_at,
            audience=m.audience,
            notification_id=m.notification_id,
            delivery_state=delivery_state or m.send_state,
            failure_reason=m.failure_reason,
        )


class StaffMessageIn(InputModel):
    text: str = Field(min_length=1, max_length=500)
    broadcast_to: list[Literal["patient"]] = Field(
        default_factory=list,
        max_length=1,
        description="Empty: a note for staff only. `patient`: sent to the patient as a "
        "notification, through the same rules as any other.",
    )


class MessagePage(BaseModel):
    items: list[MessageOut] = Field(description="Both ways, newest first")
    next_cursor: str | None


class ConversationExchange(BaseModel):
    conversation: ConversationOut
    messages: list[MessageOut] = Field(description="Both ways, oldest first")
    next_cursor: str | None
