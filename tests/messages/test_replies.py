"""The service's own answers to a patient on the WhatsApp Cloud API: stored with the
message they answer, sent once by a worker as free text, every failure recorded."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels.base import (
    ChannelName,
    OutgoingMessage,
    PermanentChannelError,
    SendResult,
    TransientChannelError,
)
from app.channels.inbound import IncomingMessage
from app.config import Settings
from app.messages import replies
from app.messages import service as message_service
from app.models import Message
from tests.factories import make_patient_at, unique_mobile

pytestmark = pytest.mark.asyncio(loop_scope="session")

SETTINGS = Settings(app_env="test", fake_providers=True)


@dataclass
class StubWhatsApp:
    """Answers `answer` (an exception to raise, or None: accepted) and keeps what it got."""

    answer: Exception | None = None
    sent: list[OutgoingMessage] = field(default_factory=list)
    name: ChannelName = ChannelName.WHATSAPP
    base_url: str = "http://whatsapp.invalid"

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        if self.answer is not None:
            raise self.answer
        return SendResult(provider_message_id=f"wamid.{uuid.uuid4().hex}", provider_status="sent")


async def answered(session: AsyncSession, text: str = "HELP") -> tuple[int, str]:
    """A patient's WhatsApp message that the service answers -> (answer id, patient's
    number), committed."""
    patient = await make_patient_at(session, unique_mobile("+9198"), country="IN")
    assert patient.mobile_e164 is not None
    received = await message_service.receive(
        session,
        SETTINGS,
        IncomingMessage(
            ChannelName.WHATSAPP, f"wamid.{uuid.uuid4().hex}", patient.mobile_e164, text
        ),
    )
    assert received.reply and received.message_id is not None
    answer_id = await replies.record(session, received.message_id, received.reply)
    await session.commit()
    return answer_id, patient.mobile_e164


async def row(session: AsyncSession, answer_id: int) -> Message:
    message = await session.scalar(
        select(Message).where(Message.id == answer_id).execution_options(populate_existing=True)
    )
    assert message is not None
    return message


async def send(
    sessionmaker: async_sessionmaker[AsyncSession],
    answer_id: int,
    channels: dict[str, Any],
    *,
    last_try: bool = False,
    settings: Settings = SETTINGS,
) -> replies.Sent:
    return await replies.send(sessionmaker, settings, channels, answer_id, last_try=last_try)


class TestSend:
    async def test_sent_once_as_free_text_to_the_sender(
        self, db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        answer_id, phone = await answered(db_session)
        stored = await row(db_session, answer_id)
        assert (stored.direction, stored.audience, stored.channel, stored.send_state) == (
            "out",
            "reply",
            "whatsapp",
            "pending",
        )
        assert stored.text and stored.phone_e164 == phone

        channel = StubWhatsApp()
        assert (await send(db_sessionmaker, answer_id, {"whatsapp": channel})).state == "sent"
        [message] = channel.sent
        assert (message.phone_e164, message.text, message.free_text_allowed) == (
            phone,
            stored.text,
            True,
        )
        stored = await row(db_session, answer_id)
        assert stored.send_state == "sent"
        assert stored.provider_message_id and stored.provider_message_id.startswith("wamid.")
        # The job again (arq ran it twice): nothing more goes out.
        assert (await send(db_sessionmaker, answer_id, {"whatsapp": channel})).state == "taken"
        assert len(channel.sent) == 1

    async def test_a_refusal_is_recorded_failed_with_the_providers_words(
        self, db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        answer_id, _ = await answered(db_session, "STOP")
        refused = PermanentChannelError("Recipient phone number not in allowed list", code="131030")
        channels = {"whatsapp": StubWhatsApp(refused)}
        sent = await send(db_sessionmaker, answer_id, channels)
        assert sent.state == "failed"
        stored = await row(db_session, answer_id)
        assert stored.send_state == "failed"
        assert stored.failure_reason == "131030: Recipient phone number not in allowed list"

    async def test_a_transient_error_is_tried_again_then_failed(
        self, db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        answer_id, _ = await answered(db_session)
        channels = {"whatsapp": StubWhatsApp(TransientChannelError("time-out"))}
        assert (await send(db_sessionmaker, answer_id, channels)).state == "pending"
        assert (await row(db_session, answer_id)).send_state == "pending"
        assert (await send(db_sessionmaker, answer_id, channels, last_try=True)).state == "failed"
        stored = await row(db_session, answer_id)
        assert stored.send_state == "failed" and "time-out" in (stored.failure_reason or "")

    async def test_no_channel_or_a_recipient_not_allowed_fails_without_a_send(
        self, db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        answer_id, _ = await answered(db_session)
        assert (await send(db_sessionmaker, answer_id, {})).state == "failed"
        assert (await row(db_session, answer_id)).failure_reason == (
            "no whatsapp channel is configured"
        )

        answer_id, _ = await answered(db_session)
        channel = StubWhatsApp()
        strict = Settings(app_env="test", fake_providers=False, allowed_recipients=[])
        sent = await send(db_sessionmaker, answer_id, {"whatsapp": channel}, settings=strict)
        assert sent.state == "failed" and channel.sent == []
        assert (await row(db_session, answer_id)).failure_reason == (
            "recipient not in ALLOWED_RECIPIENTS"
        )

    async def test_an_answer_left_pending_is_found_by_the_cron(
        self, db_session: AsyncSession
    ) -> None:
        answer_id, _ = await answered(db_session)
        assert answer_id not in await replies.stuck(db_session, after_seconds=60)
        assert answer_id in await replies.stuck(db_session, after_seconds=-60)
