"""Messages from patients: stored once, matched to a patient, then acted on."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    reply = await _act(session, settings, message, stored, received_at)
    await _announce(session, stored.id, message, received_at, stored.patient_id)
    return Received(message_id=stored.id, patient_id=stored.patient_id, reply=reply)


async def receive_many(
    session: AsyncSession,
    settings: Settings,
    messages: Sequence[IncomingMessage],
    *,
    now: datetime | None = None,
) -> list[Received]:
    """`receive` for a batch of text messages of one channel (a gateway poll's), set-based
    where it can be: one statement stores them all (each once per provider message id,
    a repeat within the batch too), one line logs the unknown senders, one statement
    announces them all. A patient's message is acted on as `receive` does, one after the
    other in the batch's order (keywords, conversation routing). -> one `Received` per
    message, in order. Flushes."""
    now = now or datetime.now(UTC)
    batch: dict[str, tuple[IncomingMessage, datetime]] = {}
    for message in messages:
        batch.setdefault(message.provider_message_id, (message, message.received_at or now))
    stored = await message_repository.insert_inbound_many(session, list(batch.values()))
    results: list[Received] = []
    announced: list[tuple[int, IncomingMessage, datetime, str | None]] = []
    counts: Counter[str] = Counter()
    for message in messages:
        row = stored.pop(message.provider_message_id, None)
        if row is None:
            counts["duplicate"] += 1
            results.append(Received(message_id=None, patient_id=None))
            continue
        received_at = batch[message.provider_message_id][1]
        if row.patient_id is None:
            counts["unmatched"] += 1
            results.append(Received(message_id=row.id, patient_id=None))
        else:
            counts["matched"] += 1
            reply = await _act(session, settings, message, row, received_at)
            results.append(Received(message_id=row.id, patient_id=row.patient_id, reply=reply))
        announced.append((row.id, message, received_at, row.patient_id))
    channel = messages[0].channel if messages else None
    for outcome, count in counts.items():
        INBOUND_MESSAGES.labels(channel, outcome).inc(count)
    unknown = [message_id for message_id, _, _, patient_id in announced if patient_id is None]
    if unknown:
        log.warning(
            "inbound messages from unknown numbers",
            extra={"message_ids": unknown, "channel": str(channel)},
        )
    await _announce_many(session, announced)
    return results


async def _act(
    session: AsyncSession,
    settings: Settings,
    message: IncomingMessage,
    stored: message_repository.StoredInbound,
    received_at: datetime,
) -> str | None:
    """A patient's message, stored: a keyword acts on their consent, anything else is
    filed on its conversation -> the answer to send them, if any."""
    assert stored.patient_id is not None
    patient = await patient_service.get_patient(session, stored.patient_id)
    keyword = keyword_of(message.text, settings)
    if keyword is None:
        row = await session.get(Message, stored.id)
        assert row is not None
        return await conversation_service.route_reply(session, patient, row, now=received_at)
    outcome = await consent_service.apply_keyword(
        session,
        settings,
        keyword,
        patient_id=patient.id,
        locale=patient.locale,
        phone=message.sender_e164,
        channel=message.channel,
    )
    return outcome.reply


async def _announce(
    session: AsyncSession,
    message_id: int,
    message: IncomingMessage,
    received_at: datetime,
    patient_id: str | None = None,
) -> None:
    """`message.received`, with where it was filed (None while a numbered list holds it,
    or for a keyword)."""
    await _announce_many(session, [(message_id, message, received_at, patient_id)])


async def _announce_many(
    session: AsyncSession, messages: Sequence[tuple[int, IncomingMessage, datetime, str | None]]
) -> None:
    """`_announce` for each (message id, message, received at, patient id): one read of
    where they were filed, one statement for the events."""
    if not messages:
        return
    filed = await message_repository.conversations_of(
        session, [message_id for message_id, _, _, _ in messages]
    )
    await webhook_service.emit_many(
        session,
        [
            (
                EventType.MESSAGE_RECEIVED,
                patient_id,
                _received_event(
                    message_id, message, received_at, patient_id, filed.get(message_id)
                ),
            )
            for message_id, message, received_at, patient_id in messages
        ],
    )


def _received_event(
    message_id: int,
    message: IncomingMessage,
    received_at: datetime,
    patient_id: str | None,
    conversation_id: uuid.UUID | None,
) -> dict[str, Any]:
    return {
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
    }
