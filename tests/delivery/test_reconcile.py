"""Lost callbacks reconciled, on real PostgreSQL and Redis, with the fake Twilio over a
real socket sending no callbacks at all (every callback dropped)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels import registry as channel_registry
from app.delivery.dispatcher import Dispatcher
from app.delivery.reconcile import MAX_CHECKS, NOT_FOUND, reconcilable, reconcile
from app.models import DeliveryAttempt, Notification, Patient, Template
from tests.delivery.conftest import Fakes
from tests.delivery.test_dispatcher import (
    due,
    make_dispatcher,
    patient_with,
    reload,
    settings_for,
)
from tests.delivery.test_whatsapp_dispatch import VARIABLES, indian_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def dispatcher(
    fakes: Fakes,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Dispatcher]:
    """Statuses walk at once (callback_delay 0) but no callback is sent."""
    await fake_config(http, fakes, callback_delay=0.0)
    settings = settings_for(fakes, reconcile_after_minutes=30)
    yield make_dispatcher(
        settings, db_sessionmaker, redis, channel_registry.build_channels(settings, http)
    )
    await fake_config(http, fakes, callback_delay=1.0)


async def fake_config(http: aiohttp.ClientSession, fakes: Fakes, **changes: object) -> None:
    async with http.post(f"{fakes.twilio_url}/_fake/config", json=changes) as answer:
        assert answer.status == 200


async def fake_stats(http: aiohttp.ClientSession, fakes: Fakes) -> dict[str, int]:
    async with http.get(f"{fakes.twilio_url}/_fake/stats") as answer:
        stats: dict[str, int] = await answer.json()
        return stats


async def sent_minutes_ago(
    session: AsyncSession, notification: Notification, minutes: float, **values: object
) -> None:
    await session.execute(
        update(DeliveryAttempt)
        .where(DeliveryAttempt.notification_id == notification.id)
        .values(sent_at=datetime.now(UTC) - timedelta(minutes=minutes), **values)
    )
    await session.commit()


async def sent_long_ago(
    session: AsyncSession,
    dispatcher: Dispatcher,
    digit: int,
    minutes: float,
    imo: str | None = None,
    **values: object,
) -> Notification:
    """A reminder to a number ending in `digit`, sent by the dispatcher, its attempt
    sent `minutes` ago (and changed by `values`)."""
    notification = await due(session, await patient_with(session, digit, imo=imo))
    await dispatcher.dispatch_once()
    await sent_minutes_ago(session, notification, minutes, **values)
    return notification


async def run(
    dispatcher: Dispatcher, db_sessionmaker: async_sessionmaker[AsyncSession], **later: float
) -> dict[str, int]:
    now = datetime.now(UTC) + timedelta(**later)
    return dict(
        await reconcile(
            db_sessionmaker, dispatcher.settings, dispatcher.channels, dispatcher.limiters, now
        )
    )


class TestReconcile:
    async def test_a_lost_delivered_callback_is_found_and_applied(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
    ) -> None:
        notification = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        assert (await reload(db_session, notification))[0].state == "sent"

        # Not 30 minutes yet: not looked up.
        await sent_minutes_ago(db_session, notification, 29)
        assert await run(dispatcher, db_sessionmaker) == {}

        await sent_minutes_ago(db_session, notification, 31)
        assert await run(dispatcher, db_sessionmaker) == {"moved": 1}
        fresh, [attempt] = await reload(db_session, notification)
        assert (fresh.state, attempt.status, attempt.provider_status) == (
            "delivered",
            "delivered",
            "delivered",
        )
        assert fresh.delivered_at is not None and attempt.reconcile_checks == 1
        # Delivered: never looked up again.
        assert await run(dispatcher, db_sessionmaker, hours=2) == {}

    async def test_a_lost_failure_fails_the_notification_as_its_callback_would(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
    ) -> None:
        # Digit 7: Twilio takes it, then reports `failed`, 30006. SMS is the last channel.
        notification = await sent_long_ago(db_session, dispatcher, 7, 31)
        assert await run(dispatcher, db_sessionmaker) == {"moved": 1}
        fresh, [attempt] = await reload(db_session, notification)
        assert (attempt.status, attempt.error_code) == ("failed", "30006")
        assert fresh.state == "failed"

    async def test_an_unknown_sid_is_recorded_reported_and_not_looked_up_again(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        fakes: Fakes,
        http: aiohttp.ClientSession,
    ) -> None:
        notification = await sent_long_ago(
            db_session, dispatcher, 3, 31, provider_message_id="SM" + "e" * 32
        )
        before = (await fake_stats(http, fakes))["lookups_not_found"]
        assert await run(dispatcher, db_sessionmaker) == {"not_found": 1}
        fresh, [attempt] = await reload(db_session, notification)
        assert (fresh.state, attempt.status) == ("sent", "sent")
        assert attempt.error_code == NOT_FOUND
        assert attempt.error_message and "20404" in attempt.error_message
        assert attempt.reconcile_checks == MAX_CHECKS
        # Later runs leave it alone: one look-up in all.
        assert await run(dispatcher, db_sessionmaker, hours=5) == {}
        assert (await fake_stats(http, fakes))["lookups_not_found"] == before + 1

    async def test_still_sent_at_the_provider_is_asked_again_then_left_with_a_reason(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        fakes: Fakes,
        http: aiohttp.ClientSession,
    ) -> None:
        await fake_config(http, fakes, callback_delay=3600.0)  # stays `queued` at Twilio
        notification = await sent_long_ago(db_session, dispatcher, 3, 31)
        assert await run(dispatcher, db_sessionmaker) == {"unchanged": 1}
        # Within the interval: not asked again.
        assert await run(dispatcher, db_sessionmaker, minutes=10) == {}
        for check in range(2, MAX_CHECKS):
            assert await run(dispatcher, db_sessionmaker, minutes=31 * check) == {"unchanged": 1}
        assert await run(dispatcher, db_sessionmaker, minutes=31 * MAX_CHECKS) == {"gave_up": 1}
        assert await run(dispatcher, db_sessionmaker, days=1) == {}
        fresh, [attempt] = await reload(db_session, notification)
        assert (fresh.state, attempt.status, attempt.error_code) == (
            "sent",
            "sent",
            "no_final_status",
        )
        assert attempt.reconcile_checks == MAX_CHECKS

    async def test_imo_has_no_look_up_and_is_left_alone(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
    ) -> None:
        assert sorted(reconcilable(dispatcher.channels)) == ["sms"]
        notification = await sent_long_ago(db_session, dispatcher, 7, 120, imo="subscribed")
        assert await run(dispatcher, db_sessionmaker) == {}
        _, [attempt] = await reload(db_session, notification)
        assert (attempt.channel, attempt.status, attempt.reconcile_checks) == ("imo", "sent", 0)

    async def test_look_ups_wait_for_the_providers_shared_limiter(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
    ) -> None:
        await sent_long_ago(db_session, dispatcher, 3, 31)
        # A 429 elsewhere paused the Twilio account for every worker: look-ups wait too.
        await dispatcher.limiters["sms"].pause(1.0)
        started = time.monotonic()
        assert await run(dispatcher, db_sessionmaker) == {"moved": 1}
        assert time.monotonic() - started >= 0.9


async def twilio_whatsapp_template(session: AsyncSession) -> str:
    """A template mapped to a WhatsApp template that Twilio knows by its Content SID."""
    key = f"test_{uuid.uuid4().hex[:10]}.whatsapp"
    session.add(
        Template(
            key=key,
            locale="en",
            title="Reminder",
            body="Dear {patient_name}, {facility_name} expects you on {appointment_date}.",
            whatsapp={
                "name": "visit_reminder",
                "language": "en_US",
                "parameters": ["appointment_date", "patient_name"],
                "content_sid": "HX" + "b" * 32,
            },
        )
    )
    await session.flush()
    return key


class TestWhatsAppThroughTwilio:
    async def test_lost_statuses_are_looked_up_and_a_number_without_whatsapp_falls_back(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        http: aiohttp.ClientSession,
        redis: Redis,
    ) -> None:
        await fake_config(http, fakes, callback_delay=0.0)
        try:
            settings = settings_for(
                fakes,
                reconcile_after_minutes=30,
                whatsapp_provider="twilio",
                whatsapp_twilio_from="+15005550006",
            )
            dispatcher = make_dispatcher(
                settings, db_sessionmaker, redis, channel_registry.build_channels(settings, http)
            )
            assert sorted(reconcilable(dispatcher.channels)) == ["sms", "whatsapp"]
            key = await twilio_whatsapp_template(db_session)
            # Digit 5: sent, delivered, read; digit 0: failed, 63003 (no WhatsApp).
            read, no_account = [
                await due(
                    db_session,
                    await indian_patient(db_session, digit),
                    template_key=key,
                    locale="en",
                    variables=VARIABLES,
                )
                for digit in (45, 40)
            ]
            await dispatcher.dispatch_once()
            for notification in (read, no_account):
                await sent_minutes_ago(db_session, notification, 31)

            assert await run(dispatcher, db_sessionmaker) == {"moved": 2}
            fresh, [attempt] = await reload(db_session, read)
            assert (fresh.state, attempt.channel, attempt.status) == ("read", "whatsapp", "read")
            fresh, [attempt] = await reload(db_session, no_account)
            assert (attempt.channel, attempt.status, attempt.error_code) == (
                "whatsapp",
                "failed",
                "63003",
            )
            # As its callback would have: due again at once, on SMS, and the number
            # is not tried on WhatsApp again for a while.
            assert (fresh.state, fresh.channel_index) == ("scheduled", 1)
            marked = await db_session.scalar(
                select(Patient.whatsapp_no_account_at)
                .where(Patient.id == fresh.patient_id)
                .execution_options(populate_existing=True)
            )
            assert marked is not None
        finally:
            await fake_config(http, fakes, callback_delay=1.0)
