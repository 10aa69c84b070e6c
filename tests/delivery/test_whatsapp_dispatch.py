"""Dispatching on WhatsApp: templates filled in at claim time, the skip without a
mapping, and each WhatsApp error's consequence, on real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import observability
from app.channels import registry as channel_registry
from app.channels.base import (
    ChannelName,
    PermanentChannelError,
    TransientChannelError,
)
from app.channels.whatsapp import NO_TEMPLATE
from app.config import Settings
from app.delivery import repository as delivery_repository
from app.delivery.dispatcher import Dispatcher
from app.fakes.whatsapp import FakeWhatsAppConfig, start_fake_whatsapp
from app.models import Message, Patient, Template
from tests.delivery.conftest import Fakes
from tests.delivery.test_dispatcher import (
    ScriptedChannel,
    due,
    make_dispatcher,
    reload,
    settings_for,
)
from tests.factories import make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAKE = FakeWhatsAppConfig(callbacks_enabled=False)
VARIABLES = {"patient_name": "Asha", "facility_name": "Civil Hospital", "appointment_date": "7 Dec"}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def whatsapp_url() -> AsyncIterator[str]:
    runner, port = await start_fake_whatsapp(FAKE)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def whatsapp_settings(providers: Fakes, whatsapp_url: str, **overrides: Any) -> Settings:
    return settings_for(
        providers,
        whatsapp_base_url=whatsapp_url,
        whatsapp_phone_number_id=FAKE.phone_number_id,
        whatsapp_access_token=FAKE.access_token,
        whatsapp_rate_limit_per_second=10_000,
        **overrides,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def dispatcher(
    fakes: Fakes,
    whatsapp_url: str,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> Dispatcher:
    settings = whatsapp_settings(fakes, whatsapp_url)
    channels = channel_registry.build_channels(settings, http)
    assert set(channels) == {"imo", "sms", "whatsapp"}
    return make_dispatcher(settings, db_sessionmaker, redis, channels)


async def template(session: AsyncSession, *, mapped: bool = True) -> str:
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
            }
            if mapped
            else None,
        )
    )
    await session.flush()
    return key


async def indian_patient(session: AsyncSession, last_digit: int = 5) -> Patient:
    from tests.clock import daytime_zone

    number = f"+9198123456{last_digit:02d}"
    return await make_patient(
        session,
        mobile_e164=number,
        phone_numbers=[{"number": number, "type": "mobile"}],
        country="IN",
        locale="en",
        time_zone=daytime_zone(),
    )


async def reminder(session: AsyncSession, patient: Patient, key: str) -> Any:
    return await due(session, patient, template_key=key, locale="en", variables=VARIABLES)


async def no_account_mark(session: AsyncSession, patient: Patient) -> Any:
    return await session.scalar(
        select(Patient.whatsapp_no_account_at)
        .where(Patient.id == patient.id)
        .execution_options(populate_existing=True)
    )


class TestTemplates:
    async def test_claim_fills_the_template_in_its_parameter_order(
        self, db_session: AsyncSession
    ) -> None:
        key = await template(db_session)
        notification = await reminder(db_session, await indian_patient(db_session), key)
        claimed = await delivery_repository.claim_due(db_session, 10_000)
        [mine] = [n for n in claimed if n.id == notification.id]
        assert mine.whatsapp_template is not None
        assert (mine.whatsapp_template.name, mine.whatsapp_template.language) == (
            "visit_reminder",
            "en_US",
        )
        assert mine.whatsapp_template.parameters == ("7 Dec", "Asha")
        assert not mine.whatsapp_unavailable

    async def test_a_mapped_template_goes_out_on_whatsapp(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        notification = await reminder(
            db_session, await indian_patient(db_session), await template(db_session)
        )
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert fresh.channel_chain == ["whatsapp", "sms"]
        assert [(a.channel, a.status) for a in attempts] == [("whatsapp", "sent")]
        assert (attempts[0].provider_message_id or "").startswith("wamid.")

    async def test_without_a_mapping_whatsapp_is_skipped_with_the_reason(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        key = await template(db_session, mapped=False)
        notification = await reminder(db_session, await indian_patient(db_session), key)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert [(a.channel, a.status) for a in attempts] == [
            ("whatsapp", "failed"),
            ("sms", "sent"),
        ]
        assert attempts[0].error_code == NO_TEMPLATE
        assert "no WhatsApp template" in (attempts[0].error_message or "")


async def wrote_on_whatsapp(
    session: AsyncSession,
    patient: Patient,
    whatsapp_url: str,
    http: aiohttp.ClientSession,
    *,
    hours_ago: float = 1.0,
    channel: str = "whatsapp",
) -> None:
    """The patient wrote `hours_ago`: stored as the webhook would, and told to the fake
    (whose window it opens; it has no webhook URL here)."""
    assert patient.mobile_e164 is not None
    session.add(
        Message(
            direction="in",
            channel=channel,
            provider_message_id=f"wamid.{uuid.uuid4().hex}",
            phone_e164=patient.mobile_e164,
            patient_id=patient.id,
            text="hello",
            media=[],
            received_at=datetime.now(UTC) - timedelta(hours=hours_ago),
        )
    )
    await session.flush()
    async with http.post(
        f"{whatsapp_url}/_fake/inbound", json={"from": patient.mobile_e164, "body": "hello"}
    ) as answer:
        assert answer.status == 200


class TestCustomerServiceWindow:
    async def test_the_claim_sees_a_whatsapp_message_of_the_last_24_hours_only(
        self, db_session: AsyncSession, whatsapp_url: str, http: aiohttp.ClientSession
    ) -> None:
        key = await template(db_session)
        cases = {"recent": (1.0, "whatsapp"), "old": (25.0, "whatsapp"), "sms": (1.0, "sms")}
        notifications = {}
        for name, (hours, channel) in cases.items():
            patient = await indian_patient(db_session, 60 + len(notifications))
            await wrote_on_whatsapp(
                db_session, patient, whatsapp_url, http, hours_ago=hours, channel=channel
            )
            notifications[name] = (await reminder(db_session, patient, key)).id
        claimed = {n.id: n for n in await delivery_repository.claim_due(db_session, 10_000)}
        assert {name: claimed[i].whatsapp_window_open for name, i in notifications.items()} == {
            "recent": True,
            "old": False,
            "sms": False,
        }

    async def test_inside_the_window_a_text_without_a_template_goes_as_free_text(
        self,
        db_session: AsyncSession,
        dispatcher: Dispatcher,
        whatsapp_url: str,
        http: aiohttp.ClientSession,
    ) -> None:
        key = await template(db_session, mapped=False)
        patient = await indian_patient(db_session, 65)
        await wrote_on_whatsapp(db_session, patient, whatsapp_url, http)
        notification = await reminder(db_session, patient, key)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert [(a.channel, a.status) for a in attempts] == [("whatsapp", "sent")]


def scripted(
    providers: Fakes,
    whatsapp_url: str,
    redis: Redis,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    answer: Exception,
) -> tuple[Dispatcher, ScriptedChannel]:
    settings = whatsapp_settings(providers, whatsapp_url)
    channels = channel_registry.build_channels(settings, http)
    channel = ScriptedChannel(ChannelName.WHATSAPP, whatsapp_url, answer)
    channels["whatsapp"] = channel
    return make_dispatcher(settings, sessionmaker, redis, channels), channel


class TestErrors:
    async def test_not_on_whatsapp_falls_back_and_is_not_tried_again(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        whatsapp_url: str,
        redis: Redis,
        http: aiohttp.ClientSession,
    ) -> None:
        no_account = PermanentChannelError(
            "WhatsApp answered 400, code 131026", code="131026", no_account=True
        )
        dispatcher, channel = scripted(
            fakes, whatsapp_url, redis, db_sessionmaker, http, no_account
        )
        key = await template(db_session)
        patient = await indian_patient(db_session)
        first = await reminder(db_session, patient, key)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, first)
        assert fresh.state == "sent"
        assert [(a.channel, a.status, a.error_code) for a in attempts] == [
            ("whatsapp", "failed", "131026"),
            ("sms", "sent", None),
        ]
        assert await no_account_mark(db_session, patient) is not None

        second = await reminder(db_session, patient, key)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, second)
        assert fresh.channel_chain == ["sms"]
        assert [a.channel for a in attempts] == ["sms"]
        assert len(channel.sent) == 1

    async def test_the_mark_lapses_and_a_new_number_clears_it(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        from datetime import UTC, datetime, timedelta

        from app.patients import repository as patient_repository

        patient = await indian_patient(db_session)
        patient.whatsapp_no_account_at = datetime.now(UTC) - timedelta(days=31)
        await db_session.flush()
        notification = await reminder(db_session, patient, await template(db_session))
        await dispatcher.dispatch_once()
        _, attempts = await reload(db_session, notification)
        assert [a.channel for a in attempts] == ["whatsapp"]

        patient.whatsapp_no_account_at = datetime.now(UTC)
        await db_session.flush()
        record = patient_repository.PatientRecord(
            id=patient.id,
            full_name=patient.full_name,
            phone_numbers=[{"number": "+919812345699", "type": "mobile"}],
            mobile_e164="+919812345699",
            country="IN",
            locale="en",
            time_zone=patient.time_zone,
            facility_id=None,
            facility_name=None,
            reminder_consent="granted",
        )
        await patient_repository.upsert_many(db_session, [record])
        assert await no_account_mark(db_session, patient) is None

    async def test_a_refused_template_fails_and_sentry_hears_once(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        whatsapp_url: str,
        redis: Redis,
        http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        heard: list[str] = []
        monkeypatch.setattr(
            observability.sentry_sdk, "capture_message", lambda m, **_: heard.append(m)
        )
        template_name = f"missing_{uuid.uuid4().hex[:6]}/en_US"
        rejected = PermanentChannelError(
            "WhatsApp answered 404, code 132001: Template name does not exist",
            code="132001",
            template_rejected=template_name,
        )
        dispatcher, _ = scripted(fakes, whatsapp_url, redis, db_sessionmaker, http, rejected)
        key = await template(db_session)
        notifications = [
            await reminder(db_session, await indian_patient(db_session), key) for _ in range(3)
        ]
        await dispatcher.dispatch_once()
        for notification in notifications:
            fresh, attempts = await reload(db_session, notification)
            assert fresh.state == "failed"
            assert "132001" in (fresh.failure_reason or "")
            assert [a.channel for a in attempts] == ["whatsapp"]
        assert len([m for m in heard if template_name in m]) == 1

    @pytest.mark.parametrize("code", ["130429", "131056"])
    async def test_rate_limits_pause_whatsapp_for_every_worker(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        whatsapp_url: str,
        redis: Redis,
        http: aiohttp.ClientSession,
        code: str,
    ) -> None:
        limited = TransientChannelError(
            f"WhatsApp answered 400, code {code}", code=code, account_limited=True
        )
        dispatcher, _ = scripted(fakes, whatsapp_url, redis, db_sessionmaker, http, limited)
        notification = await reminder(
            db_session, await indian_patient(db_session), await template(db_session)
        )
        await dispatcher.dispatch_once()
        fresh, _ = await reload(db_session, notification)
        assert (fresh.state, fresh.retry_count) == ("scheduled", 1)
        other_worker = channel_registry.build_limiters(dispatcher.settings, redis)["whatsapp"]
        assert 0.5 < await other_worker.reserve(1) <= 1.0
