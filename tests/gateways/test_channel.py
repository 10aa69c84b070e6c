"""`gateway` as a channel: the dispatcher queues for the phones, a poll hands it out, an
offline phone's messages fall back to the next channel (Twilio SMS here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels import registry as channel_registry
from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from app.gateways import service as gateway_service
from app.models import DeliveryAttempt, Gateway, Notification, Patient
from tests.delivery.conftest import Fakes
from tests.delivery.test_dispatcher import due, make_dispatcher, patient_with, reload, settings_for
from tests.fake_servers import FakeImo, FakeTwilio
from tests.gateways.conftest import Phone, register

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAINS = {"BD": ["gateway", "sms"], "*": ["sms"]}


@pytest.fixture
def fakes(fake_imo: FakeImo, fake_twilio: FakeTwilio) -> Fakes:
    return Fakes(fake_imo.url, fake_twilio.url)


async def fresh_reload(
    session: AsyncSession, notification: Notification
) -> tuple[Notification, list[DeliveryAttempt]]:
    """The notification and its attempts as stored now (other sessions wrote them)."""
    fresh, _ = await reload(session, notification)
    attempts = await session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.notification_id == notification.id)
        .order_by(DeliveryAttempt.id)
        .execution_options(populate_existing=True)
    )
    return fresh, list(attempts)


async def overdue(session: AsyncSession, patient: Patient) -> Notification:
    """A reminder due an hour ago: the dispatcher claims against PostgreSQL's now(),
    which inside a test's transaction is when the test began, however long its set-up
    took on a loaded machine."""
    return await due(session, patient, due_at=datetime.now(UTC) - timedelta(hours=1))


def gateway_settings(fakes: Fakes, phone_number: str = "+8801711000001") -> Settings:
    # Outside production a gateway phone (a real SIM) reaches ALLOWED_RECIPIENTS only.
    return settings_for(
        fakes, channel_chains=CHAINS, allowed_recipients=phone_number, fake_providers=False
    )


def dispatcher_for(
    settings: Settings,
    http: aiohttp.ClientSession,
    redis: Redis,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> Dispatcher:
    return make_dispatcher(
        settings, sessionmaker, redis, channel_registry.build_channels(settings, http)
    )


async def test_the_registry_always_has_the_gateway_channel(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    channels = channel_registry.build_channels(Settings(), http)
    assert "gateway" in channels and channels["gateway"].base_url == "gateway:"


async def test_a_reminder_goes_through_the_phone_and_is_delivered(
    fakes: Fakes,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_session: AsyncSession,
    db_sessionmaker: async_sessionmaker[AsyncSession],
    phone: Phone,
) -> None:
    dispatcher = dispatcher_for(gateway_settings(fakes), http, redis, db_sessionmaker)
    notification = await overdue(db_session, await patient_with(db_session, 1))
    await dispatcher.dispatch_once()
    fresh, attempts = await fresh_reload(db_session, notification)
    assert len(attempts) == 1, (fresh.state, fresh.failure_reason, fresh.due_at)
    [attempt] = attempts
    assert fresh.state == "sent" and attempt.channel == "gateway" and attempt.status == "sent"
    [offered] = (await phone.poll()).json()["messages"]
    assert offered == {
        "id": attempt.provider_message_id,
        "to": "+8801711000001",
        "content": notification.body,
    }
    await phone.poll({"updates": [{"id": offered["id"], "status": "UNSENT"}]})
    await phone.poll(
        {
            "updates": [
                {"id": offered["id"], "status": "SENT"},
                {"id": offered["id"], "status": "DELIVERED"},
            ]
        }
    )
    fresh, [attempt] = await fresh_reload(db_session, notification)
    assert fresh.state == "delivered" and attempt.status == "delivered"
    assert [h["state"] for h in attempt.state_history or []] == [
        "forwarded-to-gateway",
        "received-by-gateway",
        "sent",
        "delivered",
    ]


async def test_outside_production_only_allowed_recipients_are_queued(
    fakes: Fakes,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_session: AsyncSession,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    settings = gateway_settings(fakes, phone_number="+8801711000099")
    dispatcher = dispatcher_for(settings, http, redis, db_sessionmaker)
    notification = await overdue(db_session, await patient_with(db_session, 1))
    await dispatcher.dispatch_once()
    fresh, attempts = await fresh_reload(db_session, notification)
    assert fresh.state == "denied" and attempts == []


async def test_an_offline_phones_messages_fall_back_to_twilio(
    fakes: Fakes,
    fake_twilio: FakeTwilio,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_session: AsyncSession,
    db_sessionmaker: async_sessionmaker[AsyncSession],
    phone: Phone,
) -> None:
    settings = gateway_settings(fakes)
    dispatcher = dispatcher_for(settings, http, redis, db_sessionmaker)
    notification = await overdue(db_session, await patient_with(db_session, 1))
    await dispatcher.dispatch_once()
    assert len((await phone.poll()).json()["messages"]) == 1
    # Silent for longer than GATEWAY_OFFLINE_AFTER_MINUTES.
    now = datetime.now(UTC)
    assert await gateway_service.take_back_from_offline(db_session, settings, now) == 0
    silent_since = now - timedelta(minutes=settings.gateway_offline_after_minutes + 1)
    await db_session.execute(
        update(Gateway).where(Gateway.id == phone.gateway.id).values(last_polled_at=silent_since)
    )
    assert await gateway_service.take_back_from_offline(db_session, settings, now) == 1
    await db_session.commit()
    fresh, [attempt] = await fresh_reload(db_session, notification)
    assert attempt.status == "failed" and attempt.gateway_state == "taken-back"
    assert fresh.state == "scheduled" and fresh.channel_index == 1
    # The next dispatch sends it through Twilio; the phone is not offered it again.
    await db_session.execute(
        update(Notification)
        .where(Notification.id == fresh.id)
        .values(due_at=now - timedelta(hours=1))
    )
    await db_session.commit()
    await dispatcher.dispatch_once()
    fresh, attempts = await fresh_reload(db_session, notification)
    assert fresh.state == "sent"
    assert [a.channel for a in attempts] == ["gateway", "sms"]
    assert fake_twilio.messages_per_phone() == {"+8801711000001": 1}
    assert (await phone.poll()).json()["messages"] == []


class TestNoPhonePolling:
    """A message in its country's pool with no phone polling for that country moves on
    after GATEWAY_UNPOLLED_AFTER_MINUTES instead of waiting there until it expires."""

    async def queued(
        self,
        settings: Settings,
        http: aiohttp.ClientSession,
        redis: Redis,
        session: AsyncSession,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> tuple[Dispatcher, Notification, datetime]:
        """A reminder queued for the phones; the moment after which it may move on."""
        dispatcher = dispatcher_for(settings, http, redis, sessionmaker)
        notification = await overdue(session, await patient_with(session, 1))
        await dispatcher.dispatch_once()
        fresh, [attempt] = await fresh_reload(session, notification)
        assert attempt.channel == "gateway" and attempt.gateway_state is None
        waited = attempt.created_at + timedelta(minutes=settings.gateway_unpolled_after_minutes)
        return dispatcher, fresh, waited

    async def test_it_falls_back_to_the_next_channel_with_the_reason(
        self,
        fakes: Fakes,
        fake_twilio: FakeTwilio,
        http: aiohttp.ClientSession,
        redis: Redis,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        settings = gateway_settings(fakes)
        dispatcher, notification, waited = await self.queued(
            settings, http, redis, db_session, db_sessionmaker
        )
        # Not before it has waited its time.
        before = waited - timedelta(seconds=1)
        assert await gateway_service.fall_back_unpolled(db_session, settings, before) == 0
        # Later, with no phone having polled for BD: the next channel.
        later = max(waited, datetime.now(UTC) + timedelta(hours=1)) + timedelta(seconds=1)
        assert await gateway_service.fall_back_unpolled(db_session, settings, later) == 1
        await db_session.commit()
        fresh, [attempt] = await fresh_reload(db_session, notification)
        assert attempt.status == "failed" and attempt.gateway_state == "unpolled"
        assert attempt.error_message == "no gateway phone polling for BD"
        assert (attempt.state_history or [])[-1]["reason"] == "no gateway phone polling for BD"
        assert fresh.state == "scheduled" and fresh.channel_index == 1
        assert "no gateway phone polling for BD" in (fresh.failure_reason or "")
        assert "GATEWAY_UNPOLLED_AFTER_MINUTES" in (fresh.failure_reason or "")
        # Only once.
        assert await gateway_service.fall_back_unpolled(db_session, settings, later) == 0
        await db_session.execute(
            update(Notification)
            .where(Notification.id == fresh.id)
            .values(due_at=datetime.now(UTC) - timedelta(hours=1))
        )
        await db_session.commit()
        await dispatcher.dispatch_once()
        fresh, attempts = await fresh_reload(db_session, notification)
        assert fresh.state == "sent" and [a.channel for a in attempts] == ["gateway", "sms"]
        assert fake_twilio.messages_per_phone() == {"+8801711000001": 1}

    async def test_it_ends_failed_with_the_reason_when_no_channel_is_left(
        self,
        fakes: Fakes,
        http: aiohttp.ClientSession,
        redis: Redis,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        settings = settings_for(
            fakes,
            channel_chains={"BD": ["gateway"], "*": ["sms"]},
            allowed_recipients="+8801711000001",
            fake_providers=False,
        )
        _, notification, waited = await self.queued(
            settings, http, redis, db_session, db_sessionmaker
        )
        later = max(waited, datetime.now(UTC) + timedelta(hours=1))
        assert await gateway_service.fall_back_unpolled(db_session, settings, later) == 1
        await db_session.commit()
        fresh, [attempt] = await fresh_reload(db_session, notification)
        assert attempt.status == "failed" and attempt.gateway_state == "unpolled"
        assert fresh.state == "failed"
        assert fresh.failure_reason is not None
        assert fresh.failure_reason.startswith("gateway: no gateway phone polling for BD")

    async def test_a_live_phone_of_the_country_or_of_none_keeps_the_pool_waiting(
        self,
        fakes: Fakes,
        http: aiohttp.ClientSession,
        redis: Redis,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        phone: Phone,
    ) -> None:
        settings = gateway_settings(fakes)
        _, notification, waited = await self.queued(
            settings, http, redis, db_session, db_sessionmaker
        )
        later = max(waited, datetime.now(UTC)) + timedelta(minutes=1)
        elsewhere, _ = await register(db_sessionmaker, country="IN")
        anywhere, _ = await register(db_sessionmaker)

        async def polled(gateway: Gateway, at: datetime | None) -> None:
            await db_session.execute(
                update(Gateway).where(Gateway.id == gateway.id).values(last_polled_at=at)
            )

        # The country's phone polled a minute ago (busy with others: it took nothing).
        await polled(phone.gateway, later - timedelta(minutes=1))
        assert await gateway_service.fall_back_unpolled(db_session, settings, later) == 0
        # A phone of no country serves every country.
        await polled(phone.gateway, None)
        await polled(anywhere, later - timedelta(minutes=1))
        assert await gateway_service.fall_back_unpolled(db_session, settings, later) == 0
        # Another country's phone does not; nor does one silent for longer than
        # GATEWAY_OFFLINE_AFTER_MINUTES.
        await polled(
            anywhere, later - timedelta(minutes=settings.gateway_offline_after_minutes + 1)
        )
        await polled(elsewhere, later - timedelta(minutes=1))
        assert await gateway_service.fall_back_unpolled(db_session, settings, later) == 1
        await db_session.commit()
        fresh, _ = await fresh_reload(db_session, notification)
        assert fresh.state == "scheduled" and fresh.channel_index == 1
