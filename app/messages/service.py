"""Messages from patients: stored once, matched to a patient, then acted on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.channels.inbound import IncomingMessage
from app.logs import mask_phone
from app.messages import repository as message_repository
from app.observability import INBOUND_MESSAGES

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
    session: AsyncSession, message: IncomingMessage, *, now: datetime | None = None
) -> Received:
    """Store an inbound message, once per provider message id. Flushes; idempotent.

    A sender matching no patient is stored unmatched (and counted), never dropped.
    """
    received_at = message.received_at or now or datetime.now(UTC)
    stored = await message_repository.insert_inbound(session, message, received_at)
    if stored is None:
        INBOUND_MESSAGES.labels(message.channel, "duplicate").inc()
        return Received(message_id=None, patient_id=None)
    matched = stored.patient_id is not None
    INBOUND_MESSAGES.labels(message.channel, "matched" if matched else "unmatched").inc()
    if not matched:
        log.warning(
            "inbound message from an unknown number",
            extra={
                "message_id": stored.id,
                "channel": message.channel.value,
                "sender": mask_phone(message.sender_e164),
            },
        )
    return Received(message_id=stored.id, patient_id=stored.patient_id)
