"""A registered gateway phone, a client that speaks to /gateway/api/sms exactly as the
cht-gateway app does, and messages queued for the phones."""

from __future__ import annotations

import gzip
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels.base import basic_auth
from app.fakes.gateway import APP_HEADERS
from app.gateways import protocol
from app.gateways import service as gateway_service
from app.models import DeliveryAttempt, Gateway, Notification
from tests.factories import make_notification, make_patient


@dataclass
class Phone:
    """A cht-gateway app: its gateway row and a client with its credentials."""

    gateway: Gateway
    secret: str
    client: httpx.AsyncClient

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            **APP_HEADERS,
            "Authorization": basic_auth(self.gateway.name, self.secret),
            **extra,
        }

    async def poll(
        self, body: dict[str, Any] | None = None, *, compress: bool = True
    ) -> httpx.Response:
        raw = orjson.dumps(body if body is not None else {})
        headers = self.headers()
        if compress:
            raw = gzip.compress(raw)
            headers["Content-Encoding"] = "gzip"
        return await self.client.post("/gateway/api/sms", content=raw, headers=headers)


async def register(
    sessionmaker: async_sessionmaker[AsyncSession], name: str = "", **kwargs: Any
) -> tuple[Gateway, str]:
    async with sessionmaker() as session:
        gateway, secret = await gateway_service.create_gateway(
            session,
            name or f"phone-{uuid.uuid4().hex[:8]}",
            kwargs.get("country"),
            kwargs.get("number"),
        )
        await session.commit()
    return gateway, secret


@pytest_asyncio.fixture(loop_scope="session")
async def phone(
    client: httpx.AsyncClient, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> Phone:
    gateway, secret = await register(db_sessionmaker, country="BD")
    return Phone(gateway, secret, client)


@pytest_asyncio.fixture(loop_scope="session")
async def other_phone(phone: Phone, db_sessionmaker: async_sessionmaker[AsyncSession]) -> Phone:
    """A second phone of the same country."""
    gateway, secret = await register(db_sessionmaker, country="BD")
    return Phone(gateway, secret, phone.client)


async def queue_message(
    session: AsyncSession, *, body: str = "Your visit is tomorrow.", **patient: Any
) -> tuple[Notification, DeliveryAttempt]:
    """A notification handed to the gateway channel as the dispatcher leaves it: `sent`
    (the channel took it), its attempt `sent` and in the phones' pool."""
    p = await make_patient(session, **patient)
    notification = await make_notification(
        session, p, body=body, state="sent", channel_chain=["gateway", "sms"]
    )
    attempt = DeliveryAttempt(
        notification_id=notification.id,
        channel=protocol.CHANNEL,
        status="sent",
        provider_message_id=str(uuid.uuid4()),
    )
    session.add(attempt)
    await session.flush()
    return notification, attempt
