"""The messages' SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.channels.inbound import IncomingMessage
from app.models import Message

# The sender is matched by any of a patient's numbers (ix_patients_phone_numbers); a
# number shared by several patients (a family phone) goes to the one whose messaging
# number it is, then to the most recently updated record.
_INSERT_INBOUND = text(
    """
    INSERT INTO messages (direction, channel, provider_message_id, phone_e164, patient_id,
                          text, media, received_at)
    VALUES ('in', :channel, :provider_message_id, CAST(:phone AS text), (
                SELECT id FROM patients
                WHERE phone_numbers @> CAST(:number_match AS jsonb)
                ORDER BY mobile_e164 = CAST(:phone AS text) DESC, updated_at DESC, id
                LIMIT 1
            ), :text, CAST(:media AS jsonb), :received_at)
    ON CONFLICT (channel, provider_message_id) DO NOTHING
    RETURNING id, patient_id
    """
)


@dataclass(frozen=True, slots=True)
class StoredInbound:
    id: int
    patient_id: str | None


async def insert_inbound(
    session: AsyncSession, message: IncomingMessage, received_at: datetime
) -> StoredInbound | None:
    """Store `message` matched to its sender's patient -> the row, or None when this
    provider message id was stored before (a provider's retry)."""
    row = (
        await session.execute(
            _INSERT_INBOUND,
            {
                "channel": message.channel.value,
                "provider_message_id": message.provider_message_id,
                "phone": message.sender_e164,
                "number_match": orjson.dumps([{"number": message.sender_e164}]).decode(),
                "text": message.text,
                "media": orjson.dumps(
                    [
                        {"type": m.content_type, "provider_media_id": m.provider_media_id}
                        for m in message.media
                    ]
                ).decode(),
                "received_at": received_at,
            },
        )
    ).one_or_none()
    return None if row is None else StoredInbound(row.id, row.patient_id)


# `_INSERT_INBOUND` for a batch of text messages on one channel (a gateway poll's): one
# statement, each sender matched as above.
_INSERT_INBOUND_MANY = text(
    """
    INSERT INTO messages (direction, channel, provider_message_id, phone_e164, patient_id,
                          text, media, received_at)
    SELECT 'in', CAST(:channel AS text), m.provider_message_id, m.phone, (
               SELECT p.id FROM patients AS p
               WHERE p.phone_numbers @> jsonb_build_array(jsonb_build_object('number', m.phone))
               ORDER BY p.mobile_e164 = m.phone DESC, p.updated_at DESC, p.id
               LIMIT 1
           ), m.text, '[]'::jsonb, m.received_at
    FROM unnest(CAST(:provider_message_ids AS text[]), CAST(:phones AS text[]),
                CAST(:texts AS text[]), CAST(:received_ats AS timestamptz[]))
         WITH ORDINALITY AS m(provider_message_id, phone, text, received_at, position)
    ORDER BY m.position
    ON CONFLICT (channel, provider_message_id) DO NOTHING
    RETURNING id, provider_message_id, patient_id
    """
)


async def insert_inbound_many(
    session: AsyncSession, messages: Sequence[tuple[IncomingMessage, datetime]]
) -> dict[str, StoredInbound]:
    """Store text messages of one channel, each with the moment it was received ->
    the rows stored, by provider message id; an id stored before is left out. The ids
    must be distinct; media are not stored (a gateway's SMS have none)."""
    if not messages:
        return {}
    channels = {message.channel for message, _ in messages}
    assert len(channels) == 1, "one channel per batch"
    rows = await session.execute(
        _INSERT_INBOUND_MANY,
        {
            "channel": channels.pop().value,
            "provider_message_ids": [m.provider_message_id for m, _ in messages],
            "phones": [m.sender_e164 for m, _ in messages],
            "texts": [m.text for m, _ in messages],
            "received_ats": [at for _, at in messages],
        },
    )
    return {row.provider_message_id: StoredInbound(row.id, row.patient_id) for row in rows}


async def conversations_of(
    session: AsyncSession, message_ids: Sequence[int]
) -> dict[int, uuid.UUID | None]:
    """message id -> the conversation it was filed on (None: none), for those that exist."""
    rows = await session.execute(
        select(Message.id, Message.conversation_id).where(Message.id.in_(message_ids))
    )
    return {message_id: conversation_id for message_id, conversation_id in rows}
