"""Webhook rules: who subscribes to what, what an event carries, and replays."""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import NotFound
from app.models import WebhookEndpoint
from app.webhooks import repository as webhook_repository
from app.webhooks.events import EVENT_TYPES, NOTIFICATION_EVENT_STATES, EventType
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
    endpoint.events = sorted({str(event) for event in events})
    endpoint.active = active
    await session.flush()
    SUBSCRIPTIONS.forget()
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
    return await webhook_repository.replay(
        session, name, since, until, [str(e) for e in events or EVENT_TYPES]
    )


async def emit(
    session: AsyncSession, event: EventType, patient_id: str | None, data: dict[str, Any]
) -> None:
    """Record an event in the caller's transaction: it is delivered if, and only if,
    the change that caused it commits. Flushes."""
    await webhook_repository.emit(session, event.value, patient_id, data)


class Subscriptions:
    """Which event types some active endpoint wants, read at most every `ttl` seconds per
    process: the hot paths (a dispatcher batch, a batch of provider reports) skip the
    outbox altogether while nobody subscribes, at the cost of one cheap query a few
    seconds. An endpoint saved in another process is heard of within `ttl`."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._types: frozenset[str] = frozenset()
        self._read_at = -float("inf")

    def forget(self) -> None:
        self._read_at = -float("inf")

    async def wanted(self, session: AsyncSession) -> frozenset[str]:
        now = time.monotonic()
        if now - self._read_at >= self.ttl:
            self._types = await webhook_repository.subscribed_types(session)
            self._read_at = now
        return self._types


SUBSCRIPTIONS = Subscriptions()


async def notifications_changed(
    session: AsyncSession, notification_ids: Iterable[uuid.UUID]
) -> None:
    """Record `notification.sent/delivered/read/failed/denied/expired` for the
    notifications just written in the caller's transaction, as each stands now: one
    statement for the batch, and none while no endpoint wants any of them. Idempotent:
    an event already recorded for the same state (and channel) is not recorded again."""
    wanted = await SUBSCRIPTIONS.wanted(session)
    states = [s for s in NOTIFICATION_EVENT_STATES if f"notification.{s}" in wanted]
    if not states:
        return
    ids = list(notification_ids)
    if ids:
        await webhook_repository.emit_notification_events(session, ids, states)


async def imo_subscription_wanted(session: AsyncSession) -> bool:
    return EventType.IMO_SUBSCRIBED.value in await SUBSCRIPTIONS.wanted(session)


async def imo_subscribed(
    session: AsyncSession, subscribed: Sequence[tuple[str, tuple[str, str]]]
) -> None:
    """Record `imo.subscribed` in the caller's transaction for each (patient, their
    authorisation as it stood before: status, when it changed), once per such state: a
    replayed accept is not a second event, a subscription after Imo dropped the patient
    is. One statement for all of them."""
    if subscribed:
        await webhook_repository.emit_imo_subscribed(
            session, [(patient_id, ":".join(before)) for patient_id, before in subscribed]
        )


async def emit_many(
    session: AsyncSession, events: Sequence[tuple[EventType, str | None, dict[str, Any]]]
) -> None:
    """`emit` for several events at once, in one statement. Flushes."""
    await webhook_repository.emit_many(
        session, [(event.value, patient_id, data) for event, patient_id, data in events]
    )
