"""Wire shapes of email status, inbound email and the email webhooks' answers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, Field

from app.email.status import StatusPage
from app.models import EmailAddressEvent, InboundEmail


class EmailStatusEvent(BaseModel):
    event: str = Field(
        description="`delivered`, `hard_bounce`, `soft_bounce`, `dropped`, `complaint`, "
        "`unsubscribe` or `unblocked`"
    )
    source: str = Field(description="`sendgrid` (Event Webhook), `dsn` (a bounce email), `api`")
    status: Literal["deliverable", "blocked", "unknown"] = Field(
        description="The address's status after this event"
    )
    detail: str | None = Field(description="The provider's status and reason, or who unblocked")
    at: datetime = Field(description="When it happened, by the provider's clock")

    @classmethod
    def from_model(cls, e: EmailAddressEvent) -> Self:
        return cls(
            event=e.event,
            source=e.source,
            status=e.status,
            detail=e.detail,
            at=e.occurred_at,
        )


class EmailStatusOut(BaseModel):
    address: str = Field(description="Normalised: lower case")
    status: Literal["deliverable", "blocked", "unknown"] = Field(
        description="`blocked`: a hard bounce, a complaint or an unsubscribe; nothing is "
        "sent to it until it is unblocked (DELETE). `unknown`: nothing heard yet."
    )
    reason: str | None
    changed_at: datetime | None
    history: list[EmailStatusEvent] = Field(description="Newest first")
    next_cursor: str | None

    @classmethod
    def from_page(cls, page: StatusPage) -> Self:
        return cls(
            address=page.address,
            status=page.status.value,
            reason=page.reason,
            changed_at=page.changed_at,
            history=[EmailStatusEvent.from_model(e) for e in page.history],
            next_cursor=page.next_cursor,
        )


class InboundEmailOut(BaseModel):
    id: int
    via: str = Field(description="`smtp` or `inbound_parse`")
    outcome: Literal["attached", "unmatched", "bounce"]
    reason: str | None = Field(
        description="Why unmatched: `not_a_reply`, `bad_token`, `unknown_conversation`, "
        "`no_sender`, `several_senders`, `unknown_sender`, `auto_reply`, `not_sendable`, "
        "`unverified_bounce`"
    )
    sender: str | None
    subject: str
    text: str = Field(description="The reply without its quoted text and signature")
    attachments: list[dict[str, Any]] = Field(
        description="By reference only: filename, type, size, sha256"
    )
    conversation_id: uuid.UUID | None = Field(
        description="The conversation its reply address named, if it named one"
    )
    message_id: int | None
    received_at: datetime

    @classmethod
    def from_model(cls, e: InboundEmail) -> Self:
        return cls(
            id=e.id,
            via=e.via,
            outcome=e.outcome,
            reason=e.reason,
            sender=e.sender,
            subject=e.subject,
            text=e.text,
            attachments=e.attachments,
            conversation_id=e.conversation_id,
            message_id=e.message_id,
            received_at=e.received_at,
        )


class InboundEmailPage(BaseModel):
    items: list[InboundEmailOut] = Field(description="Newest first")
    next_cursor: str | None


class InboundAccepted(BaseModel):
    status: str = "ok"
    outcome: str = Field(description="`attached`, `unmatched`, `bounce` or `duplicate`")
    reason: str | None


class EventsAccepted(BaseModel):
    status: str = "ok"
    recorded: int = Field(description="Events new to us that concern an address's status")
    reports: int = Field(
        description="Events about an email we sent (delivered, bounce, dropped, deferred, "
        "open when EMAIL_OPENS_ARE_READS), applied to its delivery attempt"
    )
    ignored: int = Field(description="Events about nothing tracked (clicks, processed, ...)")
    unreadable: int = Field(description="Events without a readable address or time")
