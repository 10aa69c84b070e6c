"""Routing a patient's replies to conversations, on a real database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.channels.base import ChannelName
from app.channels.inbound import IncomingMessage
from app.config import Settings
from app.conversations import service as conversation_service
from app.messages import service as message_service
from app.models import Conversation, ConversationRouting, Message, Patient
from tests.factories import make_patient_at
from tests.stack import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")

SETTINGS = Settings(app_env="test")
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


async def writes(
    session: AsyncSession, patient: Patient, text: str, at: datetime = T0
) -> message_service.Received:
    assert patient.mobile_e164 is not None
    incoming = IncomingMessage(
        ChannelName.SMS, f"SM{uuid.uuid4().hex}", patient.mobile_e164, text, received_at=at
    )
    return await message_service.receive(session, SETTINGS, incoming)


async def conversations_of(session: AsyncSession, patient: Patient) -> list[Conversation]:
    open_now = await session.scalars(
        select(Conversation)
        .where(Conversation.patient_id == patient.id)
        .order_by(Conversation.created_at, Conversation.subject)
        .execution_options(populate_existing=True)
    )
    return list(open_now)


async def filed_on(session: AsyncSession, received: message_service.Received) -> uuid.UUID | None:
    return await session.scalar(
        select(Message.conversation_id)
        .where(Message.id == received.message_id)
        .execution_options(populate_existing=True)
    )


async def opened(session: AsyncSession, patient: Patient, *subjects: str) -> list[Conversation]:
    made = []
    for minutes, subject in enumerate(subjects):
        made.append(
            await conversation_service.open_conversation(
                session, patient.id, subject, None, now=T0 - timedelta(minutes=minutes)
            )
        )
    return made


class TestOneOrNone:
    async def test_the_one_open_conversation_takes_the_reply(
        self, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(db_session)
        [visit] = await opened(db_session, patient, "Your visit")
        received = await writes(db_session, patient, "I can't come Tuesday")
        assert received.reply is None
        assert await filed_on(db_session, received) == visit.id

    async def test_without_one_the_patient_opens_a_new_topic(
        self, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(db_session)
        received = await writes(db_session, patient, "Is the clinic open on Friday?")
        [topic] = await conversations_of(db_session, patient)
        assert (topic.subject, topic.state) == ("Is the clinic open on Friday?", "open")
        assert await filed_on(db_session, received) == topic.id


class TestNumberedList:
    async def test_three_open_asks_then_2_please_files_on_option_2(
        self, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(db_session, locale="en")
        # Listed most recently active first: Visit (2), Lab results (3), Bill (4).
        _, lab_results, _ = await opened(db_session, patient, "Visit", "Lab results", "Bill")
        held = await writes(db_session, patient, "Can I come later?")
        assert held.reply == (
            "Which topic is your message about? Reply with its number:\n"
            "1. New topic\n2. Visit\n3. Lab results\n4. Bill"
        )
        assert await filed_on(db_session, held) is None
        choice = await writes(db_session, patient, "3 please")
        assert choice.reply is None
        assert await filed_on(db_session, held) == lab_results.id
        routing = await db_session.get(ConversationRouting, patient.id, populate_existing=True)
        assert routing is not None
        assert (routing.pending_message_id, routing.options, routing.asks) == (None, [], 0)
        # The question is closed: the next message goes by the rules again.
        assert (await writes(db_session, patient, "thanks")).reply is not None

    async def test_the_list_is_in_the_patients_language(self, db_session: AsyncSession) -> None:
        patient = await make_patient_at(db_session)  # bn-BD
        await opened(db_session, patient, "সাক্ষাৎ", "ফলাফল")
        held = await writes(db_session, patient, "আমি মঙ্গলবার আসতে পারব না")
        assert held.reply is not None
        assert held.reply.startswith("আপনার বার্তাটি কোন বিষয়ে?")
        assert "1. নতুন বিষয়\n2. সাক্ষাৎ\n3. ফলাফল" in held.reply

    async def test_out_of_range_or_no_number_re_asks_twice_then_a_new_topic(
        self, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(db_session, locale="en")
        await opened(db_session, patient, "Visit", "Lab results")
        held = await writes(db_session, patient, "Can I come later?")
        first_list = held.reply
        assert first_list is not None
        assert (await writes(db_session, patient, "7")).reply == first_list
        assert (await writes(db_session, patient, "the visit one")).reply == first_list
        assert (await writes(db_session, patient, "0")).reply is None
        conversations = await conversations_of(db_session, patient)
        [topic] = [c for c in conversations if c.subject == "Can I come later?"]
        assert await filed_on(db_session, held) == topic.id

    async def test_1_is_a_new_topic(self, db_session: AsyncSession) -> None:
        patient = await make_patient_at(db_session, locale="en")
        await opened(db_session, patient, "Visit", "Lab results")
        held = await writes(db_session, patient, "New question")
        await writes(db_session, patient, "1")
        [topic] = [
            c for c in await conversations_of(db_session, patient) if c.subject == "New question"
        ]
        assert await filed_on(db_session, held) == topic.id

    async def test_a_conversation_closed_while_asking_files_on_a_new_topic(
        self, db_session: AsyncSession
    ) -> None:
        patient = await make_patient_at(db_session, locale="en")
        visit, _ = await opened(db_session, patient, "Visit", "Lab results")
        held = await writes(db_session, patient, "About that")
        await conversation_service.close(db_session, visit.id)
        await writes(db_session, patient, "2")
        filed = await filed_on(db_session, held)
        assert filed not in (None, visit.id)


class TestTwoMessagesAtOnce:
    async def test_one_question_and_the_other_message_is_read_as_its_answer(
        self, db: Database
    ) -> None:
        async with db.sessionmaker() as session:
            patient = await make_patient_at(session, locale="en")
            await opened(session, patient, "Visit", "Lab results")
            await session.commit()

        async def write(text: str) -> message_service.Received:
            async with db.sessionmaker() as session:
                received = await writes(session, patient, text)
                await session.commit()
                return received

        answers = await asyncio.gather(write("first"), write("second"))
        # Serialised on the patient's routing row: one asked, the other (no number)
        # re-asked; never two questions, nor one lost.
        assert [a.reply is not None for a in answers] == [True, True]
        async with db.sessionmaker() as session:
            routing = await session.get(ConversationRouting, patient.id)
            assert routing is not None and routing.asks == 2
            assert routing.pending_message_id in {a.message_id for a in answers}


class TestIdle:
    async def test_idle_conversations_close(self, db_session: AsyncSession) -> None:
        patient = await make_patient_at(db_session)
        old, fresh = await opened(db_session, patient, "Old", "Fresh")
        old.last_activity_at = T0 - timedelta(days=30)
        await db_session.flush()
        closed = await conversation_service.close_idle(db_session, SETTINGS, T0)
        assert old.id in closed and fresh.id not in closed
        states = {
            c.id: (c.state, c.close_reason) for c in await conversations_of(db_session, patient)
        }
        assert states[old.id] == ("closed", "idle") and states[fresh.id] == ("open", None)
