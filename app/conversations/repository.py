"""The conversations' SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Conversation, ConversationRouting, EmailAddress, Message, Notification
from app.models.conversation import ConversationState
from app.models.email_address import EmailStatus


async def lock_routing(session: AsyncSession, patient_id: str) -> ConversationRouting:
    """The patient's routing row, created if need be and locked for this transaction:
    two messages of one patient are routed one after the other, never interleaved."""
    await session.execute(
        insert(ConversationRouting).values(patient_id=patient_id).on_conflict_do_nothing()
    )
    routing = await session.scalar(
        select(ConversationRouting)
        .where(ConversationRouting.patient_id == patient_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert routing is not None
    return routing


async def open_of(session: AsyncSession, patient_id: str) -> Sequence[Conversation]:
    """The patient's open conversations, most recently active first."""
    rows = await session.scalars(
        select(Conversation)
        .where(Conversation.patient_id == patient_id, Conversation.state == ConversationState.OPEN)
        .order_by(Conversation.last_activity_at.desc(), Conversation.id)
    )
    return rows.all()


async def by_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Conversation]:
    rows = await session.scalars(select(Conversation).where(Conversation.id.in_(ids)))
    return {c.id: c for c in rows}


async def file_message(
    session: AsyncSession, message_id: int, conversation_id: uuid.UUID, now: datetime
) -> None:
    await session.execute(
        update(Message).where(Message.id == message_id).values(conversation_id=conversation_id)
    )
    await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(last_activity_at=now, updated_at=now)
    )


async def exchange_page(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    after: tuple[datetime, int] | None,
    limit: int,
) -> Sequence[tuple[Message, str | None]]:
    """The messages of a conversation, oldest first, with each outgoing message's
    notification state; `limit + 1` rows after the key `after`."""
    query = (
        select(Message, Notification.state)
        .outerjoin(Notification, Notification.id == Message.notification_id)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.received_at, Message.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(
            text("(messages.received_at, messages.id) > (:after_at, :after_id)").bindparams(
                after_at=after[0], after_id=after[1]
            )
        )
    return [(row[0], row[1]) for row in await session.execute(query)]


async def patient_page(
    session: AsyncSession,
    patient_id: str,
    before: tuple[datetime, int] | None,
    limit: int,
) -> Sequence[tuple[Message, str | None]]:
    """A patient's messages, newest first (ix_messages_patient_received), with each
    outgoing message's notification state; `limit + 1` rows before the key `before`."""
    query = (
        select(Message, Notification.state)
        .outerjoin(Notification, Notification.id == Message.notification_id)
        .where(Message.patient_id == patient_id)
        .order_by(Message.received_at.desc(), Message.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(
            text("(messages.received_at, messages.id) < (:before_at, :before_id)").bindparams(
                before_at=before[0], before_id=before[1]
            )
        )
    return [(row[0], row[1]) for row in await session.execute(query)]


_CLOSE_IDLE = text(
    """
    UPDATE conversations SET state = 'closed', closed_at = :now, close_reason = 'idle',
                             updated_at = :now
    WHERE id IN (SELECT id FROM conversations
                 WHERE state = 'open' AND last_activity_at < :before
                 ORDER BY last_activity_at LIMIT :limit
                 FOR UPDATE SKIP LOCKED)
    RETURNING id, patient_id
    """
)


async def close_idle(
    session: AsyncSession, before: datetime, now: datetime, limit: int
) -> list[tuple[uuid.UUID, str]]:
    """Close a batch of idle conversations -> their (id, patient id)."""
    rows = await session.execute(_CLOSE_IDLE, {"before": before, "now": now, "limit": limit})
    return [(row.id, row.patient_id) for row in rows]


async def message_of(session: AsyncSession, notification_id: uuid.UUID) -> Message | None:
    """The staff message a notification carries to the patient."""
    return await session.scalar(select(Message).where(Message.notification_id == notification_id))


async def email_blocked(session: AsyncSession, address: str) -> str | None:
    """Why `address` may not be mailed (app/email keeps each address's status, lower
    case), or None."""
    return await session.scalar(
        select(func.coalesce(EmailAddress.reason, "blocked")).where(
            EmailAddress.address == address.lower(), EmailAddress.status == EmailStatus.BLOCKED
        )
    )
