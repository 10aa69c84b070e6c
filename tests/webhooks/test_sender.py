"""The webhook sender on a real database, against the webhook sink over a socket:
events written with their change, signed deliveries, retries, disabling, replay."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.conversations import service as conversation_service
from app.fakes.webhook_sink import WebhookSink, start_webhook_sink
from app.models import WebhookDelivery, WebhookEndpoint
from app.webhooks import service as webhook_service
from app.webhooks import urls as webhook_urls
from app.webhooks.sender import WebhookSender
from tests.factories import make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

SETTINGS = Settings(app_env="test", webhook_allow_private=True, webhook_retry_base_seconds=1)


@pytest_asyncio.fixture(loop_scope="session")
async def sink() -> AsyncIterator[tuple[WebhookSink, str]]:
    sink = WebhookSink(webhook_service.new_secret(), echo=False)
    runner, port = await start_webhook_sink(sink)
    yield sink, f"http://127.0.0.1:{port}/hooks"
    await runner.cleanup()


async def subscribe(
    session: AsyncSession, sink: WebhookSink, url: str, *events: str
) -> WebhookEndpoint:
    endpoint, _ = await webhook_service.put_endpoint(
        session, SETTINGS, f"sink-{id(sink)}", url, events or ["conversation.opened"], True
    )
    endpoint.secret = sink.secret  # the sink verifies with the secret it was given
    await session.flush()
    return endpoint


async def owed(
    session: AsyncSession, receiver: WebhookSink, url: str, *subjects: str
) -> WebhookEndpoint:
    """An endpoint subscribed to the sink, owed one `conversation.opened` per subject
    (one patient's, in order), committed."""
    endpoint = await subscribe(session, receiver, url)
    patient = await make_patient(session)
    for subject in subjects or ("x",):
        await conversation_service.open_conversation(session, patient.id, subject, None)
    await session.commit()
    return endpoint


def sender(
    sessionmaker: async_sessionmaker[AsyncSession], http: aiohttp.ClientSession, **clock: float
) -> WebhookSender:
    now = datetime.now(UTC) + timedelta(hours=clock.get("hours", 0.0))
    return WebhookSender(settings=SETTINGS, sessionmaker=sessionmaker, http=http, clock=lambda: now)


async def deliveries(session: AsyncSession, endpoint: WebhookEndpoint) -> list[WebhookDelivery]:
    rows = await session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_name == endpoint.name)
        .order_by(WebhookDelivery.id)
        .execution_options(populate_existing=True)
    )
    return list(rows)


class TestDelivery:
    async def test_an_event_is_delivered_signed_once(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        http: aiohttp.ClientSession,
        sink: tuple[WebhookSink, str],
    ) -> None:
        receiver, url = sink
        endpoint = await subscribe(db_session, receiver, url)
        patient = await make_patient(db_session)
        conversation = await conversation_service.open_conversation(
            db_session, patient.id, "Your visit", "a-1"
        )
        await db_session.commit()
        assert await sender(db_sessionmaker, http).send_once() >= 1
        [event] = [
            e for e in receiver.received if e["data"]["conversation_id"] == str(conversation.id)
        ]
        assert event["type"] == "conversation.opened"
        assert event["data"]["reference"] == "a-1" and event["data"]["opened_by"] == "clinic"
        [delivery] = await deliveries(db_session, endpoint)
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 204)
        # Nothing is owed any more.
        await sender(db_sessionmaker, http).send_once()
        assert receiver.duplicates == 0 and receiver.refused == 0

    async def test_only_subscribed_types_reach_an_endpoint(
        self, db_session: AsyncSession, sink: tuple[WebhookSink, str]
    ) -> None:
        receiver, url = sink
        endpoint = await subscribe(db_session, receiver, url, "consent.changed")
        patient = await make_patient(db_session)
        await conversation_service.open_conversation(db_session, patient.id, "x", None)
        assert await deliveries(db_session, endpoint) == []

    async def test_a_failing_receiver_is_retried_later_then_the_endpoint_disabled(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        http: aiohttp.ClientSession,
        sink: tuple[WebhookSink, str],
    ) -> None:
        receiver, url = sink
        receiver.fail_rate = 1.0
        endpoint = await owed(db_session, receiver, url)
        before = datetime.now(UTC)
        await sender(db_sessionmaker, http).send_once()
        [delivery] = await deliveries(db_session, endpoint)
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, 500)
        assert before + timedelta(seconds=0.4) < delivery.next_attempt_at
        await db_session.refresh(endpoint)
        assert endpoint.failing_since is not None and endpoint.active

        disabled_before = REGISTRY.get_sample_value("notify_webhook_disabled_total") or 0.0
        delivery.next_attempt_at = before - timedelta(seconds=1)
        await db_session.commit()
        # 25 hours on, still failing: the endpoint is disabled.
        await sender(db_sessionmaker, http, hours=25).send_once()
        await db_session.refresh(endpoint)
        assert not endpoint.active and endpoint.disabled_at is not None
        assert REGISTRY.get_sample_value("notify_webhook_disabled_total") == disabled_before + 1

        # Re-enabled by a PUT, and the receiver well again: delivered.
        receiver.fail_rate = 0.0
        await webhook_service.put_endpoint(
            db_session, SETTINGS, endpoint.name, url, endpoint.events, True
        )
        [delivery] = await deliveries(db_session, endpoint)
        delivery.next_attempt_at = before - timedelta(seconds=1)
        await db_session.commit()
        await sender(db_sessionmaker, http).send_once()
        [delivery] = await deliveries(db_session, endpoint)
        assert (delivery.state, delivery.attempts) == ("delivered", 3)

    async def test_an_event_older_than_the_give_up_age_fails(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        http: aiohttp.ClientSession,
        sink: tuple[WebhookSink, str],
    ) -> None:
        receiver, url = sink
        receiver.fail_rate = 1.0
        endpoint = await owed(db_session, receiver, url)
        await sender(db_sessionmaker, http, hours=73).send_once()
        [delivery] = await deliveries(db_session, endpoint)
        assert delivery.state == "failed"
        receiver.fail_rate = 0.0

    async def test_replay_owes_a_delivered_event_again(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        http: aiohttp.ClientSession,
        sink: tuple[WebhookSink, str],
    ) -> None:
        receiver, url = sink
        since = datetime.now(UTC) - timedelta(minutes=1)
        endpoint = await owed(db_session, receiver, url)
        await sender(db_sessionmaker, http).send_once()
        queued = await webhook_service.replay(
            db_session, endpoint.name, since, datetime.now(UTC) + timedelta(minutes=1), None
        )
        assert queued >= 1
        await db_session.commit()
        duplicates = receiver.duplicates
        await sender(db_sessionmaker, http).send_once()
        assert receiver.duplicates == duplicates + 1


class TestOrder:
    async def test_a_patients_later_event_waits_for_the_earlier_one(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        http: aiohttp.ClientSession,
        sink: tuple[WebhookSink, str],
    ) -> None:
        receiver, url = sink
        receiver.fail_rate = 1.0
        endpoint = await owed(db_session, receiver, url, "first", "second")
        await sender(db_sessionmaker, http).send_once()
        first, second = await deliveries(db_session, endpoint)
        assert (first.attempts, second.attempts) == (1, 0)
        receiver.fail_rate = 0.0
        first.next_attempt_at = datetime.now(UTC) - timedelta(seconds=1)
        await db_session.commit()
        await sender(db_sessionmaker, http).send_once()
        await sender(db_sessionmaker, http).send_once()
        assert [e["data"]["subject"] for e in receiver.received] == ["first", "second"]


class StaticResolver(AbstractResolver):
    """A DNS server under the test's control: each name answers one address."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": self.answers[host],
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        return None


class TestTargetCheckedAtDelivery:
    """The URL was fine when saved; at delivery its host points inside (DNS rebinding),
    or the settings no longer allow private addresses: nothing is sent, the attempt
    records why, and the delivery stays owed (a PUT with a good URL, or a replay,
    finishes it)."""

    STRICT = Settings(app_env="test", webhook_retry_base_seconds=1)

    async def rebound(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        receiver: WebhookSink,
        url: str,
        resolver: AbstractResolver,
    ) -> WebhookDelivery:
        port = urlsplit(url).port
        endpoint = await owed(db_session, receiver, f"http://clinic.example:{port}/hooks")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as http:
            strict = WebhookSender(settings=self.STRICT, sessionmaker=db_sessionmaker, http=http)
            assert await strict.send_once() == 1
        [delivery] = await deliveries(db_session, endpoint)
        return delivery

    async def test_a_name_that_now_resolves_to_loopback_is_refused(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        sink: tuple[WebhookSink, str],
    ) -> None:
        receiver, url = sink
        dns = StaticResolver({"clinic.example": "127.0.0.1"})
        delivery = await self.rebound(
            db_session, db_sessionmaker, receiver, url, webhook_urls.PublicAddressResolver(dns)
        )
        assert receiver.received == []
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, None)
        assert delivery.last_error is not None and delivery.last_error.startswith("refused:")

    async def test_the_same_name_is_called_when_its_address_is_public_or_allowed(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        sink: tuple[WebhookSink, str],
    ) -> None:
        # The control: without the checking resolver the same set-up reaches the sink.
        receiver, url = sink
        dns = StaticResolver({"clinic.example": "127.0.0.1"})
        delivery = await self.rebound(db_session, db_sessionmaker, receiver, url, dns)
        assert delivery.state == "delivered" and len(receiver.received) == 1

    async def test_a_literal_private_address_is_refused_without_a_request(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        http: aiohttp.ClientSession,
        sink: tuple[WebhookSink, str],
    ) -> None:
        receiver, url = sink  # http://127.0.0.1:port/..., saved while private was allowed
        endpoint = await owed(db_session, receiver, url)
        strict = WebhookSender(settings=self.STRICT, sessionmaker=db_sessionmaker, http=http)
        await strict.send_once()
        [delivery] = await deliveries(db_session, endpoint)
        assert receiver.received == [] and delivery.state == "pending"
        assert delivery.last_error == f"refused: {webhook_urls.NOT_PUBLIC}"

    async def test_the_checking_resolver_refuses_what_the_system_resolves_inside(self) -> None:
        resolver = webhook_urls.PublicAddressResolver()
        with pytest.raises(webhook_urls.TargetRefused):
            await resolver.resolve("localhost", 80)
        await resolver.close()

    @pytest.mark.parametrize(
        ("address", "public"),
        [
            ("93.184.216.34", True),
            ("2606:2800:220:1:248:1893:25c8:1946", True),
            ("10.1.2.3", False),
            ("169.254.169.254", False),
            ("::1", False),
            ("::ffff:127.0.0.1", False),
            ("fe80::1%eth0", False),
            ("224.0.0.1", False),
        ],
    )
    async def test_public_addresses(self, address: str, public: bool) -> None:
        assert webhook_urls.is_public(address) is public

    async def test_the_workers_connector_checks_unless_private_is_allowed(self) -> None:
        for settings, checks in ((self.STRICT, True), (SETTINGS, False)):
            connector = webhook_urls.connector(settings)
            resolver = connector._resolver
            await connector.close()
            assert isinstance(resolver, webhook_urls.PublicAddressResolver) is checks
