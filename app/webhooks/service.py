"""Webhook rules: who subscribes to what, what an event carries, and replays."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import NotFound
from app.models import WebhookEndpoint
from app.webhooks import repository as webhook_repository
from app.webhooks.events import EVENT_TYPES, EventType
from app.webhooks.urls import check_url


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def put_endpoint(
    session: AsyncSession,
    settings: Settings,
    name: str,
    url: str,
    events: Sequence[str],
    active: bool,
) -> tuple[WebhookEndpoint, bool]:
    """Create or replace an endpoint -> it and whether it was created (its secret is
    shown then only). Re-activating one clears its run of failures. Raises InvalidInput
    for a URL the service must not call. Flushes."""
    await check_url(url, settings)
    endpoint = await session.get(WebhookEndpoint, name, with_for_update=True)
    created = endpoint is None
    if endpoint is None:
        endpoint = WebhookEndpoint(name=name, secret=new_secret())
        session.add(endpoint)
    if active and not endpoint.active:
        endpoint.failing_since = None
        endpoint.disabled_at = None
    endpoint.url = url
    endpoint.events = sorted(set(events))
    endpoint.active = active
    await session.flush()
    return endpoint, created


async def replay(
    session: AsyncSession,
    name: str,
    since: datetime,
    until: datetime,
    events: Sequence[str] | None,
) -> int:
    """Owe the endpoint every event of `events` (all by default) in [since, until) again
    -> how many. Raises NotFound."""
    if await session.get(WebhookEndpoint, name) is None:
        raise NotFound(f"no webhook endpoint '{name}'")
    return await webhook_repository.replay(session, name, since, until, events or EVENT_TYPES)


async def emit(
    session: AsyncSession, event: EventType, patient_id: str | None, data: dict[str, Any]
) -> None:
    """Record an event in the caller's transaction: it is delivered if, and only if,
    the change that caused it commits. Flushes."""
    await webhook_repository.emit(session, event.value, patient_id, data)


async def emit_many(
    session: AsyncSession, events: Sequence[tuple[EventType, str | None, dict[str, Any]]]
) -> None:
    """`emit` for several events at once, in one statement. Flushes."""
    await webhook_repository.emit_many(
        session, [(event.value, patient_id, data) for event, patient_id, data in events]
    )
