"""The dispatcher on real PostgreSQL and Redis, against the fake providers over sockets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
from app.delivery import provider_reports
from app.delivery.dispatcher import Dispatcher
from app.delivery.loop_guard import LoopGuard
from app.delivery.types import Report
from app.models import DeliveryAttempt, ImoAuthorization, Notification, Patient
from app.security import TokenSigner
from app.states import AttemptStatus
from tests.clock import daytime_zone, night_zone
from tests.delivery.conftest import Fakes
from tests.factories import make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def report(
    session: AsyncSession, attempt_id: int, status: AttemptStatus, **fields: str | None
) -> None:
    """A provider's report on one attempt, as the callbacks apply it."""
    [answer] = await provider_reports.apply_reports(session, [Report(attempt_id, status, **fields)])
    assert answer is True, answer


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
        loop_guard=LoopGuard(redis, settings.duplicate_limit),
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
    overrides.setdefault("due_at", datetime.now(UTC) - timedelta(seconds=1))
    # A text of its own: the same text to the same number many times is the loop guard's.
    overrides.setdefault("body", f"Your visit is on 2026-12-01 ({uuid.uuid4().hex[:8]}).")
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


@dataclass(frozen=True)
class Case:
    """One patient, one due notification, one dispatch against the fakes, and what it
    leaves behind."""

    digit: int  # the phone's last digit, which steers the fakes
    state: str  # the notification's, after the dispatch
    attempts: list[tuple[str, str, str | None]]  # (channel, status, error_code)
    imo: str | None = None  # the patient's Imo authorisation before...
    imo_after: str | None = None  # ...and after (None: as before)
    reason: str | None = None  # found in the failure reason
    consent: str = "granted"
    zone: Callable[[], str] = daytime_zone  # called at the test: "now" moves
    expires_in: timedelta | None = None


CASES = [
    pytest.param(
        Case(3, "sent", [("imo", "sent", None)], imo="subscribed"),
        id="subscribed-patient-gets-imo",
    ),
    pytest.param(
        Case(3, "sent", [("sms", "sent", None)], imo="invited"),
        id="unsubscribed-patient-gets-sms",
    ),
    pytest.param(
        Case(
            0,
            "sent",
            [("imo", "failed", "nonexistent_user"), ("sms", "sent", None)],
            imo="subscribed",
            imo_after="no_imo_account",
        ),
        id="no-imo-account-falls-back-to-sms-and-downgrades",
    ),
    pytest.param(
        Case(
            1,
            "sent",
            [("imo", "failed", "not_subscribed"), ("sms", "sent", None)],
            imo="subscribed",
            imo_after="not_subscribed",
        ),
        id="imo-not-subscribed-falls-back-to-sms-and-downgrades",
    ),
    pytest.param(
        Case(2, "sent", [("imo", "failed", "http_5xx"), ("sms", "sent", None)], imo="subscribed"),
        id="imo-server-error-falls-back-without-downgrade",
    ),
    pytest.param(
        Case(8, "denied", [("sms", "failed", "21211")], reason="21211"),
        id="invalid-number-for-sms-is-denied",
    ),
    pytest.param(
        Case(3, "denied", [], reason="no reminder consent", consent="denied"),
        id="no-consent-is-denied-without-an-attempt",
    ),
    pytest.param(
        Case(3, "scheduled", [], zone=night_zone),
        id="outside-the-window-waits-for-the-morning",
    ),
    pytest.param(
        Case(
            3, "expired", [], reason="not sent while still useful", expires_in=timedelta(minutes=-1)
        ),
        id="expired-is-not-sent",
    ),
]


class TestOneDispatch:
    @pytest.mark.parametrize("case", CASES)
    async def test_channel_and_policy(
        self, db_session: AsyncSession, dispatcher: Dispatcher, case: Case
    ) -> None:
        patient = await patient_with(
            db_session,
            case.digit,
            imo=case.imo,
            reminder_consent=case.consent,
            time_zone=case.zone(),
        )
        overrides = {}
        if case.expires_in is not None:
            overrides["expires_at"] = datetime.now(UTC) + case.expires_in
        notification = await due(db_session, patient, **overrides)
        was_due = notification.due_at

        assert await dispatcher.dispatch_once() >= 1

        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == case.state
        assert [(a.channel, a.status, a.error_code) for a in attempts] == case.attempts
        for attempt in attempts:
            if attempt.status == "sent":
                assert attempt.provider_message_id
                if attempt.channel == "sms":
                    assert attempt.provider_message_id.startswith("SM")
        assert (fresh.sent_at is not None) == (case.state == "sent")
        if case.state == "scheduled":
            assert fresh.due_at > was_due
        if case.reason is None:
            assert fresh.failure_reason is None
        else:
            assert fresh.failure_reason is not None and case.reason in fresh.failure_reason
        assert await imo_status(db_session, patient) == (case.imo_after or case.imo)

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

    async def test_a_recipient_who_opted_out_at_twilio_is_opted_out_on_sms(
        self,
        db_session: AsyncSession,
        dispatcher: Dispatcher,
        fakes: Fakes,
        http: aiohttp.ClientSession,
    ) -> None:
        patient = await patient_with(db_session, 41)
        async with http.post(
            f"{fakes.twilio_url}/_fake/opt-outs", json={"number": patient.mobile_e164}
        ) as answer:
            assert answer.status == 200
        notification = await due(db_session, patient)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert (fresh.state, fresh.failure_reason) == ("denied", "opted out")
        assert [(a.channel, a.status, a.error_code) for a in attempts] == [
            ("sms", "failed", "21610")
        ]
        await db_session.refresh(patient)
        assert patient.opted_out_channels == ["sms"]
        # The next one is refused before any channel is tried.
        following = await due(db_session, patient)
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, following)
        assert (fresh.state, fresh.failure_reason, attempts) == ("denied", "opted out", [])


class TestConsole:
    async def test_one_line_a_batch_counts_its_outcomes_without_phones(
        self, db_session: AsyncSession, dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
    ) -> None:
        sent = await due(db_session, await patient_with(db_session, 3))
        refused = await due(
            db_session, await patient_with(db_session, 4, reminder_consent="denied")
        )
        with caplog.at_level("INFO", logger="app.delivery.dispatcher"):
            assert await dispatcher.dispatch_once() >= 2
        [line] = [r for r in caplog.records if r.getMessage().startswith("dispatched")]
        assert line.outcomes["sent via sms"] >= 1
        assert line.outcomes["denied"] >= 1
        assert "sent via sms" in line.getMessage() and " ms" in line.getMessage()
        assert "17110000" not in caplog.text  # no phone number, masked or not
        assert (await reload(db_session, sent))[0].state == "sent"
        assert (await reload(db_session, refused))[0].state == "denied"


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


Scripted = Callable[..., tuple[ScriptedChannel, Dispatcher]]


@pytest.fixture
def scripted(
    fakes: Fakes, redis: Redis, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> Scripted:
    """`scripted(answer, base_url=..., **settings)`: a dispatcher whose only channel,
    SMS, answers `answer` (an exception to raise, a coroutine function, or None: sent)."""

    def build(
        answer: Any = None, *, base_url: str | None = None, **overrides: Any
    ) -> tuple[ScriptedChannel, Dispatcher]:
        channel = ScriptedChannel(ChannelName.SMS, base_url or fakes.twilio_url, answer)
        settings = settings_for(fakes, **overrides)
        return channel, make_dispatcher(settings, db_sessionmaker, redis, {"sms": channel})

    return build


async def reported(
    sessionmaker: async_sessionmaker[AsyncSession],
    attempt_id: int,
    status: AttemptStatus,
    **fields: str | None,
) -> None:
    """A provider's report on one attempt, applied and committed in a unit of its own."""
    async with sessionmaker() as session:
        await report(session, attempt_id, status, **fields)
        await session.commit()


class TestSafety:
    # The second: a real provider reached through a local proxy or tunnel (issue 11).
    @pytest.mark.parametrize("provider_url", ["https://api.twilio.com", "http://127.0.0.1:8443"])
    async def test_outside_production_only_allowed_recipients_reach_a_real_provider(
        self, db_session: AsyncSession, scripted: Scripted, provider_url: str
    ) -> None:
        real, dispatcher = scripted(
            base_url=provider_url,
            app_env="staging",
            allowed_recipients="+8801711000004",
            fake_providers=False,
        )
        allowed = await due(db_session, await patient_with(db_session, 4))
        refused = await due(db_session, await patient_with(db_session, 5))
        await dispatcher.dispatch_once()
        assert [m.phone_e164 for m in real.sent] == ["+8801711000004"]
        assert (await reload(db_session, allowed))[0].state == "sent"
        fresh, attempts = await reload(db_session, refused)
        assert fresh.state == "denied" and attempts == []
        assert fresh.failure_reason is not None and "ALLOWED_RECIPIENTS" in fresh.failure_reason

    async def test_what_expires_between_claim_and_attempt_never_goes_out(
        self, db_session: AsyncSession, scripted: Scripted
    ) -> None:
        # The worker's clock says "still useful" (it judged at claim time); by the time
        # the attempt would be written, the database's clock says it has expired.
        real, dispatcher = scripted()
        dispatcher.clock = lambda: datetime.now(UTC) - timedelta(minutes=1)
        notification = await due(
            db_session,
            await patient_with(db_session, 6),
            expires_at=datetime.now(UTC) - timedelta(seconds=1),
        )
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert (fresh.state, fresh.failure_reason) == ("expired", "not sent while still useful")
        assert attempts == [] and real.sent == []

    async def test_a_batch_that_fails_mid_way_is_released_at_once(
        self, db_session: AsyncSession, scripted: Scripted
    ) -> None:
        # Redis away at the loop guard: the worker lives on (and would renew its lease),
        # so nobody else would take its batch over; it releases the batch itself.
        class RedisAway:
            limit = 5

            async def duplicates(self, messages: object) -> set[uuid.UUID]:
                raise ConnectionError("redis away")

        real, dispatcher = scripted()
        dispatcher.loop_guard = RedisAway()  # type: ignore[assignment]
        notification = await due(db_session, await patient_with(db_session, 7))
        with pytest.raises(ConnectionError):
            await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert (fresh.state, fresh.claimed_at, fresh.lease_id) == ("scheduled", None, None)
        assert attempts == [] and real.sent == []

    async def test_transient_error_retries_later_and_keeps_the_reason(
        self, db_session: AsyncSession, scripted: Scripted
    ) -> None:
        _, dispatcher = scripted(TransientChannelError("busy", code="http_5xx"))
        notification = await due(db_session, await patient_with(db_session, 3))
        was_due = notification.due_at
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert (fresh.state, fresh.retry_count) == ("scheduled", 1)
        assert fresh.due_at > was_due
        assert fresh.failure_reason == "sms: http_5xx: busy"
        assert [(a.status, a.error_code) for a in attempts] == [("failed", "http_5xx")]

    @pytest.mark.parametrize(
        ("early", "error_code"),
        [
            pytest.param(AttemptStatus.READ, None, id="read"),
            pytest.param(AttemptStatus.DELIVERED, None, id="delivered"),
            pytest.param(AttemptStatus.FAILED, "30003", id="failed-fails-the-notification"),
        ],
    )
    async def test_a_callback_that_beats_our_own_write_stands(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        scripted: Scripted,
        early: AttemptStatus,
        error_code: str | None,
    ) -> None:
        async def answer_after_callback(message: OutgoingMessage) -> SendResult:
            attempt_id = int(message.callback_url.rsplit("/", 1)[1])
            await reported(
                db_sessionmaker,
                attempt_id,
                early,
                provider_message_id="SM1",
                **({"error_code": error_code} if error_code else {}),
            )
            return SendResult(provider_message_id="SM1", provider_status="queued")

        _, dispatcher = scripted(answer_after_callback)
        notification = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == early.value
        assert [(a.status, a.error_code) for a in attempts] == [(early.value, error_code)]


class TestUnclearAnswers:
    async def test_a_success_that_could_not_be_read_is_unconfirmed_and_never_resent(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        scripted: Scripted,
    ) -> None:
        unreadable = PermanentChannelError(
            "Twilio answered 201 without a message sid: it may have sent it",
            code="unexpected",
            unexpected=True,
            maybe_sent=True,
        )
        channel, dispatcher = scripted(unreadable)
        notification = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        fresh, attempts = await reload(db_session, notification)
        assert fresh.state == "sent"
        assert fresh.failure_reason is not None and fresh.failure_reason.startswith("unconfirmed")
        assert [(a.status, a.error_code) for a in attempts] == [("unconfirmed", "unexpected")]

        # The provider's own status callback confirms it after all.
        await reported(
            db_sessionmaker, attempts[0].id, AttemptStatus.DELIVERED, provider_message_id="SM3"
        )
        fresh, _ = await reload(db_session, notification)
        statuses = await db_session.scalars(
            select(DeliveryAttempt.status).where(DeliveryAttempt.notification_id == fresh.id)
        )
        assert (fresh.state, list(statuses)) == ("delivered", ["delivered"])
        assert await dispatcher.dispatch_once() == 0
        assert len(channel.sent) == 1

    async def test_a_429_pauses_the_channel_for_every_worker(
        self, db_session: AsyncSession, redis: Redis, scripted: Scripted
    ) -> None:
        throttled = TransientChannelError(
            "Too Many Requests", code="20429", provider_status="429", retry_after=3
        )
        _, dispatcher = scripted(throttled)
        await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        other_worker = channel_registry.build_limiters(dispatcher.settings, redis)["sms"]
        assert 2.5 < await other_worker.reserve(1) <= 3.0
