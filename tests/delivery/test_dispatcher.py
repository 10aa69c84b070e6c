"""The dispatcher on real PostgreSQL and Redis, against the fake providers over sockets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels import registry as channel_registry
from app.channels.base import (
    Channel,
    ChannelName,
    OutgoingMessage,
    PermanentChannelError,
    SendResult,
    TransientChannelError,
)
from app.config import Settings
from app.delivery import status as delivery_status
from app.delivery.dispatcher import Dispatcher
from app.delivery.types import Report
from app.fakes.imo import FakeImoConfig, start_fake_imo
from app.fakes.twilio import FakeTwilioConfig, start_fake_twilio
from app.models import DeliveryAttempt, ImoAuthorization, Notification, Patient
from app.security import TokenSigner
from app.states import AttemptStatus
from tests.clock import daytime_zone, night_zone
from tests.factories import make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def report(
    session: AsyncSession, attempt_id: int, status: AttemptStatus, **fields: str | None
) -> None:
    """A provider's report on one attempt, as the callbacks apply it."""
    [answer] = await delivery_status.apply_reports(session, [Report(attempt_id, status, **fields)])
    assert answer is True, answer


@dataclass
class Fakes:
    imo_url: str
    twilio_url: str


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def fakes() -> AsyncIterator[Fakes]:
    imo_runner, imo_port = await start_fake_imo(FakeImoConfig(callbacks_enabled=False))
    twilio_runner, twilio_port = await start_fake_twilio(FakeTwilioConfig(callbacks_enabled=False))
    yield Fakes(f"http://127.0.0.1:{imo_port}/api/simple", f"http://127.0.0.1:{twilio_port}")
    await imo_runner.cleanup()
    await twilio_runner.cleanup()


def settings_for(fakes: Fakes, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": "test",
        "imo_base_url": fakes.imo_url,
        "imo_username": "fake-imo",
        "imo_password": "fake-imo-password",
        "twilio_base_url": fakes.twilio_url,
        "twilio_account_sid": "ACfake00000000000000000000000000",
        "twilio_auth_token": "fake-twilio-token",
        "twilio_sms_from": "+15005550006",
        "imo_rate_limit_per_second": 10_000,
        "twilio_rate_limit_per_second": 10_000,
    }
    values.update(overrides)
    return Settings(**values)


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session")
async def dispatcher(
    fakes: Fakes,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> Dispatcher:
    settings = settings_for(fakes)
    return make_dispatcher(
        settings, db_sessionmaker, redis, channel_registry.build_channels(settings, http)
    )


def make_dispatcher(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    channels: dict[str, Channel],
) -> Dispatcher:
    return Dispatcher(
        settings=settings,
        sessionmaker=sessionmaker,
        channels=channels,
        limiters=channel_registry.build_limiters(settings, redis),
        signer=TokenSigner("test"),
    )


async def patient_with(
    session: AsyncSession, last_digit: int, imo: str | None = None, **overrides: Any
) -> Patient:
    number = f"+88017110000{last_digit:02d}"
    overrides.setdefault("time_zone", daytime_zone())
    patient = await make_patient(
        session,
        mobile_e164=number,
        phone_numbers=[{"number": number, "type": "mobile"}],
        **overrides,
    )
    if imo is not None:
        session.add(ImoAuthorization(patient_id=patient.id, status=imo))
        await session.flush()
    return patient


async def due(session: AsyncSession, patient: Patient, **overrides: Any) -> Notification:
    from datetime import UTC, datetime, timedelta

    overrides.setdefault("due_at", datetime.now(UTC) - timedelta(seconds=1))
    notification = await make_notification(session, patient, **overrides)
    await session.commit()
    return notification


async def reload(
    session: AsyncSession, notification: Notification
) -> tuple[Notification, list[DeliveryAttempt]]:
    fresh = await session.get(Notification, notification.id, populate_existing=True)
    assert fresh is not None
    attempts = (
        await session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.notification_id == notification.id)
            .order_by(DeliveryAttempt.id)
        )
    ).all()
    return fresh, list(attempts)


async def imo_status(session: AsyncSession, patient: Patient) -> str | None:
    return await session.scalar(
        select(ImoAuthorization.status).where(ImoAuthorization.patient_id == patient.id)
    )


class TestChannels:
    async def test_subscribed_patient_gets_imo(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        notification = await due(db_session, await patient_with(db_session, 3, imo="subscribed"))
        assert await dispatcher.dispatch_once() >= 1
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert [(a.channel, a.status) for a in attempts] == [("imo", "sent")]
        assert attempts[0].provider_message_id
        assert fresh.sent_at is not None

    async def test_unsubscribed_patient_gets_sms(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        notification = await due(db_session, await patient_with(db_session, 3, imo="invited"))
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert [(a.channel, a.status) for a in attempts] == [("sms", "sent")]
        assert attempts[0].provider_message_id and attempts[0].provider_message_id.startswith("SM")

    async def test_both_channels_with_chunks_larger_than_the_concurrency(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        http: aiohttp.ClientSession,
        redis: Redis,
    ) -> None:
        # A rate limit of 10,000/s allows chunks of 200, far above a concurrency of 3:
        # the channels must not each hold part of the permits and wait for the rest.
        settings = settings_for(fakes, dispatch_concurrency=3)
        dispatcher = make_dispatcher(
            settings, db_sessionmaker, redis, channel_registry.build_channels(settings, http)
        )
        notifications = []
        for i in range(8):
            imo = "subscribed" if i % 2 else None
            patient = await patient_with(db_session, 3, imo=imo)
            notifications.append(await due(db_session, patient))
        await asyncio.wait_for(dispatcher.dispatch_once(), timeout=30)
        channels = []
        for notification in notifications:
            fresh, attempts = await reload(db_session, notification)
            assert fresh.state == "sent"
            channels += [a.channel for a in attempts]
        assert sorted(channels) == ["imo"] * 4 + ["sms"] * 4

    @pytest.mark.parametrize(
        ("digit", "code", "downgraded"),
        [(0, "nonexistent_user", "no_imo_account"), (1, "not_subscribed", "not_subscribed")],
    )
    async def test_imo_refusal_falls_back_to_sms_and_downgrades(
        self,
        db_session: AsyncSession,
        dispatcher: Dispatcher,
        digit: int,
        code: str,
        downgraded: str,
    ) -> None:
        patient = await patient_with(db_session, digit, imo="subscribed")
        notification = await due(db_session, patient)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert [(a.channel, a.status, a.error_code) for a in attempts] == [
            ("imo", "failed", code),
            ("sms", "sent", None),
        ]
        assert await imo_status(db_session, patient) == downgraded

    async def test_imo_server_error_falls_back_without_downgrade(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        patient = await patient_with(db_session, 2, imo="subscribed")
        notification = await due(db_session, patient)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert [(a.channel, a.status) for a in attempts] == [("imo", "failed"), ("sms", "sent")]
        assert await imo_status(db_session, patient) == "subscribed"

    async def test_invalid_number_for_sms_is_denied(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        notification = await due(db_session, await patient_with(db_session, 8))
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "denied"
        assert fresh.failure_reason is not None and "21211" in fresh.failure_reason
        assert [(a.channel, a.status, a.error_code) for a in attempts] == [
            ("sms", "failed", "21211")
        ]


class TestPolicy:
    async def test_no_consent_is_denied_without_an_attempt(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        patient = await patient_with(db_session, 3, reminder_consent="denied")
        notification = await due(db_session, patient)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert (fresh.state, fresh.failure_reason, attempts) == (
            "denied",
            "no reminder consent",
            [],
        )

    async def test_outside_the_window_nothing_is_sent(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        patient = await patient_with(db_session, 3, time_zone=night_zone())
        notification = await due(db_session, patient)
        was_due = notification.due_at
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "scheduled"
        assert fresh.due_at > was_due
        assert attempts == []

    async def test_expired_is_not_sent(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        from datetime import UTC, datetime, timedelta

        patient = await patient_with(db_session, 3)
        notification = await due(
            db_session, patient, expires_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert (fresh.state, attempts) == ("expired", [])


@dataclass
class ScriptedChannel:
    """A stand-in provider for what the fakes cannot stage."""

    name: ChannelName
    base_url: str
    answer: Any = None
    sent: list[OutgoingMessage] = field(default_factory=list)

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        if callable(self.answer):
            return await self.answer(message)  # type: ignore[no-any-return]
        if isinstance(self.answer, Exception):
            raise self.answer
        return SendResult(provider_message_id=f"SM{uuid.uuid4().hex}", provider_status="queued")


def scripted_dispatcher(
    fakes: Fakes,
    redis: Redis,
    sessionmaker: async_sessionmaker[AsyncSession],
    channel: ScriptedChannel,
    **overrides: Any,
) -> Dispatcher:
    return make_dispatcher(settings_for(fakes, **overrides), sessionmaker, redis, {"sms": channel})


class TestSafety:
    async def test_outside_production_only_allowed_recipients_reach_a_real_provider(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        redis: Redis,
    ) -> None:
        real = ScriptedChannel(ChannelName.SMS, "https://api.twilio.com")
        dispatcher = scripted_dispatcher(
            fakes,
            redis,
            db_sessionmaker,
            real,
            app_env="staging",
            allowed_recipients="+8801711000004",
        )
        allowed = await due(db_session, await patient_with(db_session, 4))
        refused = await due(db_session, await patient_with(db_session, 5))
        await dispatcher.dispatch_once()
        assert [m.phone_e164 for m in real.sent] == ["+8801711000004"]
        assert (await reload(db_session, allowed))[0].state == "sent"
        fresh, attempts = await reload(db_session, refused)
        assert fresh.state == "denied" and attempts == []
        assert fresh.failure_reason is not None and "ALLOWED_RECIPIENTS" in fresh.failure_reason

    async def test_transient_error_retries_later_and_keeps_the_reason(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        redis: Redis,
    ) -> None:
        flaky = ScriptedChannel(
            ChannelName.SMS, fakes.twilio_url, TransientChannelError("busy", code="http_5xx")
        )
        dispatcher = scripted_dispatcher(fakes, redis, db_sessionmaker, flaky)
        notification = await due(db_session, await patient_with(db_session, 3))
        was_due = notification.due_at
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert (fresh.state, fresh.retry_count) == ("scheduled", 1)
        assert fresh.due_at > was_due
        assert fresh.failure_reason == "sms: http_5xx: busy"
        assert [(a.status, a.error_code) for a in attempts] == [("failed", "http_5xx")]

    @pytest.mark.parametrize("early", [AttemptStatus.READ, AttemptStatus.DELIVERED])
    async def test_a_callback_that_beats_our_own_write_stands(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        redis: Redis,
        early: AttemptStatus,
    ) -> None:
        async def answer_after_callback(message: OutgoingMessage) -> SendResult:
            attempt_id = int(message.callback_url.rsplit("/", 1)[1])
            async with db_sessionmaker() as session:
                await report(session, attempt_id, early, provider_message_id="SM1")
                await session.commit()
            return SendResult(provider_message_id="SM1", provider_status="queued")

        channel = ScriptedChannel(ChannelName.SMS, fakes.twilio_url, answer_after_callback)
        dispatcher = scripted_dispatcher(fakes, redis, db_sessionmaker, channel)
        notification = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == early.value
        assert [a.status for a in attempts] == [early.value]

    async def test_a_failure_that_beats_our_own_write_fails_the_notification(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        redis: Redis,
    ) -> None:
        async def answer_after_failure(message: OutgoingMessage) -> SendResult:
            attempt_id = int(message.callback_url.rsplit("/", 1)[1])
            async with db_sessionmaker() as session:
                await report(
                    session,
                    attempt_id,
                    AttemptStatus.FAILED,
                    provider_message_id="SM2",
                    error_code="30003",
                )
                await session.commit()
            return SendResult(provider_message_id="SM2", provider_status="queued")

        channel = ScriptedChannel(ChannelName.SMS, fakes.twilio_url, answer_after_failure)
        dispatcher = scripted_dispatcher(fakes, redis, db_sessionmaker, channel)
        notification = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "failed"
        assert [(a.status, a.error_code) for a in attempts] == [("failed", "30003")]


class TestUnclearAnswers:
    async def test_a_success_that_could_not_be_read_is_unconfirmed_and_never_resent(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        redis: Redis,
    ) -> None:
        unreadable = PermanentChannelError(
            "Twilio answered 201 without a message sid: it may have sent it",
            code="unexpected",
            unexpected=True,
            maybe_sent=True,
        )
        channel = ScriptedChannel(ChannelName.SMS, fakes.twilio_url, unreadable)
        dispatcher = scripted_dispatcher(fakes, redis, db_sessionmaker, channel)
        notification = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert fresh.failure_reason is not None and fresh.failure_reason.startswith("unconfirmed")
        assert [(a.status, a.error_code) for a in attempts] == [("unconfirmed", "unexpected")]

        # The provider's own status callback confirms it after all.
        async with db_sessionmaker() as session:
            await report(
                session, attempts[0].id, AttemptStatus.DELIVERED, provider_message_id="SM3"
            )
            await session.commit()
        fresh, _ = await reload(db_session, notification)
        statuses = await db_session.scalars(
            select(DeliveryAttempt.status).where(DeliveryAttempt.notification_id == fresh.id)
        )
        assert (fresh.state, list(statuses)) == ("delivered", ["delivered"])
        assert await dispatcher.dispatch_once() == 0
        assert len(channel.sent) == 1

    async def test_a_429_pauses_the_channel_for_every_worker(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        redis: Redis,
    ) -> None:
        throttled = TransientChannelError(
            "Too Many Requests", code="20429", provider_status="429", retry_after=3
        )
        channel = ScriptedChannel(ChannelName.SMS, fakes.twilio_url, throttled)
        dispatcher = scripted_dispatcher(fakes, redis, db_sessionmaker, channel)
        await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        other_worker = channel_registry.build_limiters(dispatcher.settings, redis)["sms"]
        assert 2.5 < await other_worker.reserve(1) <= 3.0
