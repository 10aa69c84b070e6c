"""The dispatcher with email in a chain, on real PostgreSQL and Redis, sending to the
embedded SMTP server over a socket (and SMS to the fake Twilio)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels import registry as channel_registry
from app.delivery.dispatcher import Dispatcher
from app.fakes import mail as fake_mail
from app.models import Conversation, EmailAddress, Event, Message, Notification, StaffMember
from app.models.conversation import ConversationState
from app.models.message import Direction
from tests.clock import daytime_zone, night_zone
from tests.delivery.conftest import Fakes
from tests.delivery.test_dispatcher import due, make_dispatcher, patient_with, reload, settings_for
from tests.factories import make_staff, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADDRESS = "rahim.uddin@mail.example.org"


@pytest_asyncio.fixture(loop_scope="session")
async def smtp(tmp_path: Path) -> AsyncIterator[fake_mail.RunningMail]:
    running = await fake_mail.start(tmp_path / "mail")
    try:
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def dispatcher(
    fakes: Fakes,
    smtp: fake_mail.RunningMail,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Dispatcher]:
    settings = email_settings(fakes, smtp)
    channels = channel_registry.build_channels(settings, http)
    assert "email" in channels
    try:
        yield make_dispatcher(settings, db_sessionmaker, redis, channels)
    finally:
        await channel_registry.close_channels(channels)


def email_settings(fakes: Fakes, smtp: fake_mail.RunningMail, **overrides: Any) -> Any:
    return settings_for(
        fakes,
        smtp_host="127.0.0.1",
        smtp_port=smtp.smtp_port,
        smtp_security="none",
        email_from="Dhaka Clinic <clinic@notify.test>",
        email_rate_limit_per_second=10_000,
        channel_chains={"BD": ["imo", "sms"], "BD/appointment_reminder": ["email", "sms"]},
        **overrides,
    )


class TestReminderChainWithEmail:
    async def test_email_first_then_nothing_else(
        self, db_session: AsyncSession, dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        patient = await patient_with(db_session, 3, email=ADDRESS)
        notification = await due(db_session, patient, title="Your visit")

        assert await dispatcher.dispatch_once() >= 1

        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert [(a.channel, a.status) for a in attempts] == [("email", "sent")]
        [kept] = smtp.store.listed()
        # The Message-ID we generated is the attempt's provider id.
        assert kept["message_id"] == attempts[0].provider_message_id
        assert kept["to"] == [ADDRESS]
        assert kept["subject"] == "Your visit"

    async def test_a_refused_address_falls_back_to_sms(
        self, db_session: AsyncSession, dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        smtp.store.refuse = {ADDRESS: 550}
        patient = await patient_with(db_session, 3, email=ADDRESS)
        notification = await due(db_session, patient)

        await dispatcher.dispatch_once()

        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert [(a.channel, a.status, a.error_code) for a in attempts] == [
            ("email", "failed", "smtp_550"),
            ("sms", "sent", None),
        ]
        assert attempts[0].error_message is not None
        assert ADDRESS not in attempts[0].error_message
        assert not smtp.store.messages

    async def test_a_deferred_address_is_retried_later_on_email(
        self, db_session: AsyncSession, dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        smtp.store.refuse = {ADDRESS: 451}
        patient = await patient_with(db_session, 3, email=ADDRESS)
        notification = await due(db_session, patient)

        await dispatcher.dispatch_once()

        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "scheduled"
        assert fresh.retry_count == 1
        assert fresh.channel_chain == ["email", "sms"] and fresh.channel_index == 0
        assert [(a.channel, a.error_code) for a in attempts] == [("email", "smtp_451")]

    async def test_no_address_goes_straight_to_sms(
        self, db_session: AsyncSession, dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        patient = await patient_with(db_session, 3)
        notification = await due(db_session, patient)

        await dispatcher.dispatch_once()

        fresh, attempts = await reload(db_session, notification)
        assert fresh.channel_chain == ["sms"]
        assert [a.channel for a in attempts] == ["sms"]

    async def test_outside_production_only_allowed_addresses_are_mailed(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        smtp: fake_mail.RunningMail,
        http: aiohttp.ClientSession,
        redis: Redis,
    ) -> None:
        settings = email_settings(
            fakes, smtp, fake_providers=False, allowed_recipients="Allowed@MAIL.example.org"
        )
        channels = channel_registry.build_channels(settings, http)
        guarded = make_dispatcher(settings, db_sessionmaker, redis, channels)
        allowed = await patient_with(db_session, 3, email="Allowed@mail.example.org")
        other = await patient_with(db_session, 4, email=ADDRESS)
        let_through = await due(db_session, allowed)
        held_back = await due(db_session, other)
        try:
            await guarded.dispatch_once()
        finally:
            await channel_registry.close_channels(channels)

        sent, _ = await reload(db_session, let_through)
        denied, attempts = await reload(db_session, held_back)
        assert sent.state == "sent"
        assert denied.state == "denied" and not attempts
        assert denied.failure_reason is not None
        assert "ALLOWED_RECIPIENTS" in denied.failure_reason
        assert [m["to"] for m in smtp.store.listed()] == [["Allowed@mail.example.org"]]


class TestConversationMessageByEmail:
    async def test_goes_by_email_with_the_conversations_subject(
        self, db_session: AsyncSession, dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        patient = await patient_with(db_session, 3, imo="subscribed", email=ADDRESS)
        now = datetime.now(UTC)
        conversation = Conversation(
            id=uuid.uuid4(),
            patient_id=patient.id,
            subject="Your test results",
            state=ConversationState.OPEN,
            last_activity_at=now,
        )
        db_session.add(conversation)
        notification = await due(
            db_session, patient, purpose="conversation", template_key="conversation.staff_message"
        )
        db_session.add(
            Message(
                direction=Direction.OUT,
                patient_id=patient.id,
                conversation_id=conversation.id,
                text=notification.body,
                media=[],
                received_at=now,
                audience="patient",
                notification_id=notification.id,
            )
        )
        await db_session.commit()

        await dispatcher.dispatch_once()

        fresh, attempts = await reload(db_session, notification)
        assert fresh.channel_chain == ["email", "imo", "sms"]
        assert [(a.channel, a.status) for a in attempts] == [("email", "sent")]
        [kept] = smtp.store.listed()
        assert kept["subject"] == "Your test results"


@pytest_asyncio.fixture(loop_scope="session")
async def staff_dispatcher(
    fakes: Fakes,
    smtp: fake_mail.RunningMail,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Dispatcher]:
    """Staff have no time zone: STAFF_TIME_ZONE is one where it is daytime now."""
    settings = email_settings(fakes, smtp, staff_time_zone=daytime_zone())
    channels = channel_registry.build_channels(settings, http)
    try:
        yield make_dispatcher(settings, db_sessionmaker, redis, channels)
    finally:
        await channel_registry.close_channels(channels)


class TestStaffRecipients:
    """A staff member's notification (no patient) through the real claim and dispatcher:
    email only, to their address; denied without an attempt when it may not be mailed."""

    async def staff_due(
        self, session: AsyncSession, **staff: Any
    ) -> tuple[StaffMember, Notification]:
        member = await make_staff(session, **staff)
        anyone = await patient_with(session, 3)  # the factory's template; not the recipient
        notification = await due(
            session, anyone, patient_id=None, staff_id=member.id, locale="en", title="Ward duty"
        )
        return member, notification

    async def test_goes_by_email_to_the_staff_member_despite_the_phone_chain(
        self, db_session: AsyncSession, staff_dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        member, notification = await self.staff_due(db_session, name="Nasrin Akter")

        assert await staff_dispatcher.dispatch_once() >= 1

        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent", fresh.failure_reason
        assert fresh.channel_chain == ["email"]
        assert [(a.channel, a.status) for a in attempts] == [("email", "sent")]
        [kept] = smtp.store.listed()
        assert kept["to"] == [member.email]
        assert kept["subject"] == "Ward duty"
        assert kept["message_id"] == attempts[0].provider_message_id

    async def test_a_blocked_address_is_denied_and_never_attempted(
        self, db_session: AsyncSession, staff_dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        member, notification = await self.staff_due(db_session)
        db_session.add(
            EmailAddress(
                address=member.email.lower(),
                status="blocked",
                reason="hard bounce",
                changed_at=datetime.now(UTC),
            )
        )
        await db_session.commit()

        await staff_dispatcher.dispatch_once()

        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "denied"
        assert fresh.failure_reason == "email address blocked: hard bounce"
        assert not attempts
        assert not smtp.store.messages

    async def test_an_inner_join_would_leave_it_claimed_forever(
        self, db_session: AsyncSession, staff_dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        # Claimed and settled in one batch with a patient's: neither is left `sending`.
        _, for_staff = await self.staff_due(db_session)
        patient = await patient_with(db_session, 3, email=ADDRESS)
        for_patient = await due(db_session, patient)

        await staff_dispatcher.dispatch_once()

        assert (await reload(db_session, for_staff))[0].state == "sent"
        assert (await reload(db_session, for_patient))[0].state == "sent"

    async def test_timed_in_the_zone_of_the_patient_whose_event_made_it(
        self, db_session: AsyncSession, staff_dispatcher: Dispatcher, smtp: fake_mail.RunningMail
    ) -> None:
        # STAFF_TIME_ZONE is in daytime; the event's patient is at night: it waits.
        member = await make_staff(db_session)
        patient = await patient_with(db_session, 3, time_zone=night_zone())
        event = Event(
            id=unique_id("e"),
            type="enrolment",
            patient_id=patient.id,
            staff_id=member.id,
            occurred_at=datetime.now(UTC),
            data={},
            rule_errors={},
        )
        db_session.add(event)
        notification = await due(
            db_session,
            patient,
            patient_id=None,
            staff_id=member.id,
            locale="en",
            event_id=event.id,
            rule_name="tell-the-nurse",
        )

        await staff_dispatcher.dispatch_once()

        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "scheduled" and not attempts
        assert fresh.due_at > datetime.now(UTC)
        assert not smtp.store.messages
