"""Conversation rules: open, close, read; and which conversation a patient's reply is on.

A reply goes to the patient's one open conversation. With several open, the patient is
asked once with a numbered list (1: a new topic; 2..n: each open conversation) and their
next message is read for a number; no number or one out of range re-asks, at most
twice, then the message becomes a new topic. The patient's routing row is locked
throughout, so two messages arriving together are routed one after the other.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.config import Settings
from app.conversations import repository as conversation_repository
from app.conversations.routing import (
    MAX_ASKS,
    NEW_TOPIC_OPTION,
    chosen_option,
    numbered_list,
    snippet,
)
from app.errors import Conflict, InvalidInput, NotFound, field_error
from app.models import Conversation, ConversationRouting, Message, Patient
from app.models.conversation import ConversationState
from app.models.message import Direction
from app.notifications import service as notification_service
from app.notifications.schemas import NotificationIn
from app.templates import service as template_service
from app.templates.placeholders import FREE_TEXT_TEMPLATE
from app.webhooks import service as webhook_service
from app.webhooks.events import EventType

log = logging.getLogger(__name__)

IDLE_CLOSE_BATCH = 1000
# Staff messages to patients travel as notifications of this purpose, in the template
# of texts written by hand (FREE_TEXT_TEMPLATE).
STAFF_MESSAGE_PURPOSE = "conversation"


@dataclass(frozen=True, slots=True)
class ExchangePage:
    conversation: Conversation
    messages: list[tuple[Message, str | None]]
    next_cursor: str | None


async def open_conversation(
    session: AsyncSession,
    patient_id: str,
    subject: str,
    reference: str | None,
    *,
    now: datetime | None = None,
) -> Conversation:
    """Raises InvalidInput naming `patient_id` for an unknown patient. Flushes."""
    if await session.get(Patient, patient_id) is None:
        raise field_error("patient_id", f"no patient '{patient_id}'")
    return await _new(session, patient_id, subject, reference, now or datetime.now(UTC))


async def _new(
    session: AsyncSession,
    patient_id: str,
    subject: str,
    reference: str | None,
    now: datetime,
    *,
    opened_by: str = "clinic",
) -> Conversation:
    conversation = Conversation(
        id=uuid.uuid4(),
        patient_id=patient_id,
        subject=subject,
        reference=reference,
        state=ConversationState.OPEN,
        last_activity_at=now,
    )
    session.add(conversation)
    await session.flush()
    await webhook_service.emit(
        session,
        EventType.CONVERSATION_OPENED,
        patient_id,
        {
            "conversation_id": str(conversation.id),
            "patient_id": patient_id,
            "subject": subject,
            "reference": reference,
            "opened_by": opened_by,
        },
    )
    return conversation


async def follow_up(session: AsyncSession, closed: Conversation, now: datetime) -> Conversation:
    """A patient wrote on a closed conversation by a way that names it (a reply to its
    email): a new conversation about the same thing, opened by the patient. Flushes."""
    return await _new(
        session, closed.patient_id, closed.subject, closed.reference, now, opened_by="patient"
    )


async def get(session: AsyncSession, conversation_id: uuid.UUID) -> Conversation:
    """Raises NotFound."""
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"no conversation '{conversation_id}'")
    return conversation


async def exchange(
    session: AsyncSession, conversation_id: uuid.UUID, cursor: str | None, limit: int
) -> ExchangePage:
    """The conversation and a page of its messages both ways, oldest first."""
    conversation = await get(session, conversation_id)
    after = pagination.decode(cursor, datetime, int) if cursor else None
    rows = await conversation_repository.exchange_page(
        session, conversation_id, (after[0], after[1]) if after else None, limit
    )
    page, next_cursor = pagination.split(rows, limit, lambda r: (r[0].received_at, r[0].id))
    return ExchangePage(conversation, page, next_cursor)


async def close(
    session: AsyncSession, conversation_id: uuid.UUID, *, now: datetime | None = None
) -> Conversation:
    """Close by the API; closing a closed conversation changes nothing. Raises NotFound."""
    conversation = await get(session, conversation_id)
    if conversation.state == ConversationState.OPEN:
        conversation.state = ConversationState.CLOSED
        conversation.closed_at = now or datetime.now(UTC)
        conversation.close_reason = "api"
        await session.flush()
        await _closed(session, conversation.id, conversation.patient_id, "api")
    return conversation


async def _closed(
    session: AsyncSession, conversation_id: uuid.UUID, patient_id: str, reason: str
) -> None:
    await webhook_service.emit(
        session,
        EventType.CONVERSATION_CLOSED,
        patient_id,
        {"conversation_id": str(conversation_id), "patient_id": patient_id, "reason": reason},
    )


async def write(
    session: AsyncSession,
    settings: Settings,
    conversation_id: uuid.UUID,
    text: str,
    broadcast_to: Sequence[str],
    *,
    api_key_id: int | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> tuple[Message, str | None, bool]:
    """Staff write on a conversation -> the message, its notification's state, and
    whether it was written now.

    Without `broadcast_to` it is a note for staff only. With `patient` it goes to the
    patient as a notification (template `conversation.staff_message`), through the
    dispatcher like any other: consent, opt-outs, window, allow-list, channel chain; an
    `idempotency_key` (the API key's, `api_key_id`) makes a retry of it return the first
    message instead of messaging the patient twice (another text under the same key:
    InvalidInput). Raises NotFound, or Conflict for a closed conversation. Flushes.
    """
    now = now or datetime.now(UTC)
    conversation = await get(session, conversation_id)
    if conversation.state != ConversationState.OPEN:
        raise Conflict("the conversation is closed: open a new one")
    notification = None
    if "patient" in broadcast_to:
        await _refuse_blocked_email(session, settings, conversation.patient_id)
        request = NotificationIn(
            patient_id=conversation.patient_id,
            purpose=STAFF_MESSAGE_PURPOSE,
            template=FREE_TEXT_TEMPLATE,
        )
        # Staff write letters: their lines reach the patient (email and SMS carry them).
        # The one-line rule is for the clinic system's template variables; this text
        # was checked as a StaffMessageIn (storable, at most 500 characters).
        request = request.model_copy(update={"variables": {"text": text}})
        notification, created = await notification_service.schedule(
            session,
            request,
            settings,
            api_key_id=api_key_id,
            idempotency_key=None
            if idempotency_key is None
            else f"conversation:{conversation.id}:{idempotency_key}",
            now=now,
        )
        if not created:
            first = await conversation_repository.message_of(session, notification.id)
            if first is not None:
                return first, notification.state, False
    message = Message(
        direction=Direction.OUT,
        patient_id=conversation.patient_id,
        conversation_id=conversation.id,
        text=text,
        media=[],
        received_at=now,
        audience="patient" if notification is not None else "note",
        notification_id=notification.id if notification is not None else None,
    )
    session.add(message)
    conversation.last_activity_at = now
    await session.flush()
    return message, notification.state if notification is not None else None, True


async def _refuse_blocked_email(session: AsyncSession, settings: Settings, patient_id: str) -> None:
    """A staff message that would go to a blocked email address is refused here, where
    staff see it (GovFlow accepted it and failed later, out of sight). Raises
    InvalidInput (422) naming `broadcast_to`."""
    patient = await session.get(Patient, patient_id)
    if patient is None or not patient.email:
        return
    by_email = STAFF_MESSAGE_PURPOSE in settings.email_preferred_purposes or "email" in (
        settings.chain_for(patient.country, STAFF_MESSAGE_PURPOSE)
    )
    if not by_email:
        return
    reason = await conversation_repository.email_blocked(session, patient.email)
    if reason is not None:
        raise field_error(
            "broadcast_to",
            f"the patient's email address is blocked ({reason}): nothing is sent to it "
            "until it is unblocked with DELETE /v1/email-status/{address}",
        )


async def patient_messages(
    session: AsyncSession, patient_id: str, cursor: str | None, limit: int
) -> tuple[list[tuple[Message, str | None]], str | None]:
    """A patient's messages both ways, newest first. Raises NotFound, InvalidInput."""
    if await session.get(Patient, patient_id) is None:
        raise NotFound(f"no patient '{patient_id}'")
    before = pagination.decode(cursor, datetime, int) if cursor else None
    rows = await conversation_repository.patient_page(
        session, patient_id, (before[0], before[1]) if before else None, limit
    )
    return pagination.split(rows, limit, lambda r: (r[0].received_at, r[0].id))


async def close_idle(session: AsyncSession, settings: Settings, now: datetime) -> list[uuid.UUID]:
    """Close a batch of conversations idle for CONVERSATION_IDLE_DAYS -> their ids.
    Safe on every worker at once (SKIP LOCKED)."""
    before = now - timedelta(days=settings.conversation_idle_days)
    closed = await conversation_repository.close_idle(session, before, now, IDLE_CLOSE_BATCH)
    for conversation_id, patient_id in closed:
        await _closed(session, conversation_id, patient_id, "idle")
    return [conversation_id for conversation_id, _ in closed]


async def route_reply(
    session: AsyncSession, patient: Patient, message: Message, *, now: datetime
) -> str | None:
    """File a patient's message on its conversation, or ask which -> the text to answer
    the patient with, if any. Flushes; holds the patient's routing lock until commit."""
    routing = await conversation_repository.lock_routing(session, patient.id)
    if routing.pending_message_id is not None:
        return await _answer(session, patient, routing, message, now)
    open_now = await conversation_repository.open_of(session, patient.id)
    if len(open_now) <= 1:
        target = open_now[0] if open_now else await _topic_of(session, patient, message, now)
        await conversation_repository.file_message(session, message.id, target.id, now)
        return None
    routing.pending_message_id = message.id
    routing.options = [str(c.id) for c in open_now]
    routing.asks = 1
    await session.flush()
    return await _list(session, patient, [c.subject for c in open_now])


async def _answer(
    session: AsyncSession,
    patient: Patient,
    routing: ConversationRouting,
    message: Message,
    now: datetime,
) -> str | None:
    """The patient's message while a question is open: a choice, or not."""
    pending = routing.pending_message_id
    assert pending is not None
    options = [uuid.UUID(o) for o in routing.options]
    choice = chosen_option(message.text or "")
    if choice is not None and NEW_TOPIC_OPTION <= choice <= len(options) + 1:
        target = None
        if choice != NEW_TOPIC_OPTION:
            target = (await conversation_repository.by_ids(session, [options[choice - 2]])).get(
                options[choice - 2]
            )
        if target is None or target.state != ConversationState.OPEN:
            held = await session.get(Message, pending)
            target = await _topic_of(session, patient, held or message, now)
        await _settle(session, routing, pending, target, now)
        return None
    if routing.asks >= MAX_ASKS:
        held = await session.get(Message, pending)
        await _settle(
            session, routing, pending, await _topic_of(session, patient, held or message, now), now
        )
        log.info("no choice after the list was sent %d times: a new topic", MAX_ASKS)
        return None
    routing.asks += 1
    await session.flush()
    subjects = await conversation_repository.by_ids(session, options)
    return await _list(session, patient, [subjects[o].subject for o in options if o in subjects])


async def _settle(
    session: AsyncSession,
    routing: ConversationRouting,
    message_id: int,
    target: Conversation,
    now: datetime,
) -> None:
    """File the held message and close the question."""
    await conversation_repository.file_message(session, message_id, target.id, now)
    routing.pending_message_id = None
    routing.options = []
    routing.asks = 0
    await session.flush()


async def _topic_of(
    session: AsyncSession, patient: Patient, message: Message, now: datetime
) -> Conversation:
    """A new conversation the patient opened by writing: its subject is their words."""
    subject = snippet(message.text or "") or "(media)"
    return await _new(session, patient.id, subject, None, now, opened_by="patient")


async def _list(session: AsyncSession, patient: Patient, subjects: list[str]) -> str | None:
    try:
        new_topic = await template_service.render(
            session, "conversation.new_topic", patient.locale, {}
        )
        asked = await template_service.render(
            session,
            "conversation.choose",
            patient.locale,
            {"options": numbered_list(new_topic.body, subjects)},
        )
    except InvalidInput:
        log.warning("no template for the numbered list: the question goes unasked")
        return None
    return asked.body
