"""Dispatching on WhatsApp: templates filled in at claim time, the skip without a
mapping, and each WhatsApp error's consequence, on real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import sentry_sdk
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy import select, update
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
from app.delivery.unread import hand_on_unread
from app.fakes.whatsapp import FakeWhatsAppConfig, start_fake_whatsapp
from app.models import Message, Notification, Patient, Template
from app.states import AttemptStatus
from tests.delivery.conftest import Fakes
from tests.delivery.test_dispatcher import (
    ScriptedChannel,
    due,
    make_dispatcher,
    reload,
    report,
    settings_for,
)
from tests.factories import make_patient
from tests.test_log_privacy import CapturingTransport

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
    assert set(channels) == {"imo", "sms", "whatsapp", "gateway"}
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
        notifications: dict[str, uuid.UUID] = {}
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

    async def test_the_mark_holds_for_whatsapp_retry_no_account_days(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        whatsapp_url: str,
        redis: Redis,
        http: aiohttp.ClientSession,
    ) -> None:
        settings = whatsapp_settings(fakes, whatsapp_url, whatsapp_retry_no_account_days=7)
        dispatcher = make_dispatcher(
            settings, db_sessionmaker, redis, channel_registry.build_channels(settings, http)
        )
        key = await template(db_session)
        reminders = {}
        for days, digit in ((6, 71), (8, 72)):
            patient = await indian_patient(db_session, digit)
            patient.whatsapp_no_account_at = datetime.now(UTC) - timedelta(days=days)
            await db_session.flush()
            reminders[days] = await reminder(db_session, patient, key)
        await dispatcher.dispatch_once()
        chains = {}
        for days, notification in reminders.items():
            fresh, attempts = await reload(db_session, notification)
            chains[days] = (fresh.channel_chain, [a.channel for a in attempts])
        assert chains == {6: (["sms"], ["sms"]), 8: (["whatsapp", "sms"], ["whatsapp"])}

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
        monkeypatch.setattr(sentry_sdk, "capture_message", lambda m, **_: heard.append(m))
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


class TestUnreadFallback:
    async def test_delivered_on_whatsapp_and_not_read_goes_once_more_on_sms(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
    ) -> None:
        notification = await reminder(
            db_session, await indian_patient(db_session, 81), await template(db_session)
        )
        await dispatcher.dispatch_once()
        _, [attempt] = await reload(db_session, notification)
        await report(db_session, attempt.id, AttemptStatus.DELIVERED)
        await db_session.execute(
            update(Notification)
            .where(Notification.id == notification.id)
            .values(sent_at=datetime.now(UTC) - timedelta(hours=7))
        )
        await db_session.commit()

        rules = dispatcher.settings.model_copy(update={"unread_fallback_hours": {"*": 6.0}})
        assert await hand_on_unread(db_sessionmaker, rules) == 1
        handed, _ = await reload(db_session, notification)
        assert (handed.state, handed.channel_index) == ("scheduled", 1)
        assert handed.failure_reason == "whatsapp: not read within 6 h"
        await dispatcher.dispatch_once()
        db_session.expire(attempt)  # loaded before its report
        sent, attempts = await reload(db_session, notification)
        assert sent.state == "sent"
        assert [(a.channel, a.status) for a in attempts] == [
            ("whatsapp", "delivered"),
            ("sms", "sent"),
        ]
        assert await hand_on_unread(db_sessionmaker, rules) == 0


class TestSharedLimit:
    @pytest.mark.parametrize("provider", ["cloud", "twilio"])
    async def test_the_number_has_its_own_limit_whichever_provider_carries_it(
        self, redis: Redis, provider: str
    ) -> None:
        """WHATSAPP_RATE_LIMIT_PER_SECOND (80, the Cloud API's default per number) in one
        Redis key shared by every worker: not Twilio's SMS limit, even through Twilio."""
        headroom = 1 - channel_registry.LIMIT_HEADROOM
        default = channel_registry.build_limiters(
            Settings(app_env="test", whatsapp_provider=provider), redis
        )
        assert default["whatsapp"].key == "ratelimit:whatsapp" != default["sms"].key
        assert default["whatsapp"].rate_per_second == pytest.approx(80 * headroom)
        chosen = channel_registry.build_limiters(
            Settings(app_env="test", whatsapp_provider=provider, whatsapp_rate_limit_per_second=20),
            redis,
        )
        assert chosen["whatsapp"].rate_per_second == pytest.approx(20 * headroom)


@pytest.fixture
def sentry_events() -> Iterator[CapturingTransport]:
    """Sentry on, its events kept in memory."""
    transport = CapturingTransport()
    settings = Settings(sentry_dsn="https://public@sentry.invalid/1")
    observability.init_sentry(settings, component="worker", transport=transport)
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()


@pytest_asyncio.fixture(loop_scope="session")
async def echoing_cloud_api() -> AsyncIterator[str]:
    """A Cloud API that answers every message with an error code WhatsApp never
    documented, echoing the number and the parameters it was sent, as providers do."""

    async def refuse(request: web.Request) -> web.Response:
        payload = await request.json()
        values = [
            parameter["text"]
            for component in payload["template"]["components"]
            for parameter in component["parameters"]
        ]
        text = f"(#987654) cannot send to {payload['to']} ({' / '.join(values)})"
        return web.json_response({"error": {"message": text, "code": 987654}}, status=400)

    app = web.Application()
    app.router.add_post("/{version}/{phone_number_id}/messages", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


class TestUnexpected:
    async def test_an_unknown_answer_reaches_sentry_without_the_number_or_the_text(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        fakes: Fakes,
        echoing_cloud_api: str,
        redis: Redis,
        http: aiohttp.ClientSession,
        sentry_events: CapturingTransport,
    ) -> None:
        settings = whatsapp_settings(fakes, echoing_cloud_api)
        dispatcher = make_dispatcher(
            settings, db_sessionmaker, redis, channel_registry.build_channels(settings, http)
        )
        patient = await indian_patient(db_session, 37)
        notification = await reminder(db_session, patient, await template(db_session))
        await dispatcher.dispatch_once()

        fresh, attempts = await reload(db_session, notification)
        assert [(a.channel, a.status, a.error_code) for a in attempts] == [
            ("whatsapp", "failed", "unexpected"),
            ("sms", "sent", None),
        ]
        events: list[dict[str, Any]] = [dict(e.get_event() or {}) for e in sentry_events.envelopes]
        [event] = [e for e in events if "987654" in str(e.get("message"))]
        # The provider's answer is there, with the request it answered (number masked).
        exchange: dict[str, Any] = event["contexts"]["provider_exchange"]
        assert exchange["response"]["status"] == 400
        assert "987654" in exchange["response"]["body"]
        assert exchange["request"]["to"] == "+9198******37"
        assert exchange["request"]["template"]["parameters"] == 2
        reported = sentry_events.text()
        assert patient.mobile_e164 is not None
        for secret in (
            patient.mobile_e164,
            patient.mobile_e164.removeprefix("+"),
            fresh.body,
            VARIABLES["patient_name"],
            VARIABLES["appointment_date"],
        ):
            assert secret not in reported, (secret, reported[-2000:])
