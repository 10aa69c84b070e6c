"""Messages from patients: stored once, matched to a patient, then acted on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.channels.inbound import IncomingMessage
from app.config import Settings
from app.consent import service as consent_service
from app.consent.keywords import keyword_of
from app.conversations import service as conversation_service
from app.logs import mask_phone
from app.messages import repository as message_repository
from app.models import Message
from app.observability import INBOUND_MESSAGES
from app.patients import service as patient_service
from app.webhooks import service as webhook_service
from app.webhooks.events import EventType

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """What became of one inbound message. `message_id` None: a repeat, nothing stored."""

    message_id: int | None
    patient_id: str | None
    # A text to answer the sender with, on the channel it came by.
    reply: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.message_id is None


async def receive(
    session: AsyncSession,
    settings: Settings,
    message: IncomingMessage,
    *,
    now: datetime | None = None,
) -> Received:
    """Store an inbound message, once per provider message id, and act on it. Flushes;
    idempotent: a repeat changes nothing and answers nothing.

    A sender matching no patient is stored unmatched (and counted), never dropped. A
    patient's STOP, START or HELP acts on their consent and is answered; anything else
    is filed on its conversation, or the patient is asked which (the reply).
    """
    received_at = message.received_at or now or datetime.now(UTC)
    stored = await message_repository.insert_inbound(session, message, received_at)
    if stored is None:
        INBOUND_MESSAGES.labels(message.channel, "duplicate").inc()
        return Received(message_id=None, patient_id=None)
    match = "unmatched" if stored.patient_id is None else "matched"
    INBOUND_MESSAGES.labels(message.channel, match).inc()
    if stored.patient_id is None:
        log.warning(
            "inbound message from an unknown number",
            extra={
                "message_id": stored.id,
                "channel": message.channel.value,
                "sender": mask_phone(message.sender_e164),
            },
        )
        await _announce(session, stored.id, message, received_at)
        return Received(message_id=stored.id, patient_id=None)
    patient = await patient_service.get_patient(session, stored.patient_id)
    keyword = keyword_of(message.text, settings)
    if keyword is None:
        row = await session.get(Message, stored.id)
        assert row is not None
        reply = await conversation_service.route_reply(session, patient, row, now=received_at)
    else:
        outcome = await consent_service.apply_keyword(
            session,
            settings,
            keyword,
            patient_id=patient.id,
            locale=patient.locale,
            phone=message.sender_e164,
            channel=message.channel,
        )
        reply = outcome.reply
    await _announce(session, stored.id, message, received_at, patient.id)
    return Received(message_id=stored.id, patient_id=patient.id, reply=reply)


async def _announce(
    session: AsyncSession,
    message_id: int,
    message: IncomingMessage,
    received_at: datetime,
    patient_id: str | None = None,
) -> None:
    """`message.received`, with where it was filed (None while a numbered list holds it,
    or for a keyword)."""
    conversation_id = await session.scalar(
        select(Message.conversation_id).where(Message.id == message_id)
    )
    await webhook_service.emit(
        session,
        EventType.MESSAGE_RECEIVED,
        patient_id,
        {
            "message_id": message_id,
            "patient_id": patient_id,
            "channel": message.channel.value,
            "from": message.sender_e164,
            "text": message.text,
            "media": [
                {"type": m.content_type, "provider_media_id": m.provider_media_id}
                for m in message.media
            ],
            "received_at": received_at.isoformat(),
            "conversation_id": str(conversation_id) if conversation_id else None,
        },
    )
