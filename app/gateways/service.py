"""Gateway phones: registering them, authenticating their polls, and what a poll does.

A poll (cht-gateway's POST to /gateway/api/sms) does three things in one unit of work:
hands the SMS the phone received to the two-way path (once per id), records the
statuses it reports on the messages it was given (the attempt's state history, and for
SENT, DELIVERED and FAILED the same report path as every provider's callbacks), and
answers with the messages due for it (and the answers to what it received).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.service import hash_key
from app.channels.base import ChannelName
from app.channels.inbound import IncomingMessage
from app.config import Settings
from app.db.session import (
    create_engine_and_sessionmaker,
    standalone_session,
    unique_violation,
)
from app.delivery import provider_reports
from app.delivery.types import Report
from app.errors import Conflict
from app.gateways import protocol
from app.gateways import repository as gateway_repository
from app.gateways.protocol import Poll
from app.messages import service as message_service
from app.models import Gateway
from app.observability import GATEWAY_TAKEN_BACK, GATEWAY_UNPOLLED
from app.states import AttemptStatus

log = logging.getLogger(__name__)

SECRET_PREFIX = "gw_"  # noqa: S105 - a prefix, not a secret
GATEWAY_NAME_CHARS = 100


async def create_gateway(
    session: AsyncSession, name: str, country: str | None, number: str | None
) -> tuple[Gateway, str]:
    """Register a phone; returns the row and its secret, which is never stored. Flushes."""
    if await gateway_repository.name_taken(session, name):
        raise Conflict(f"a gateway named {name!r} exists already")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    gateway = Gateway(
        name=name,
        country=country.upper() if country else None,
        number=number,
        secret_hash=hash_key(secret),
    )
    try:
        # Two requests with one name racing: the unique constraint picks the winner.
        async with session.begin_nested():
            session.add(gateway)
    except IntegrityError as exc:
        if not unique_violation(exc):
            raise
        raise Conflict(f"a gateway named {name!r} exists already") from exc
    return gateway, secret


async def issue_gateway(
    database_url: str, name: str, country: str | None, number: str | None
) -> tuple[int, str]:
    """Create and commit a gateway in a unit of work of its own (`notify gateways
    create`); returns (its id, its secret)."""
    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    try:
        async with sessionmaker() as session:
            gateway, secret = await create_gateway(session, name, country, number)
            await session.commit()
            return gateway.id, secret
    finally:
        await engine.dispose()


async def credentials_work(database_url: str, name: str, secret: str) -> bool:
    """Whether a gateway's name and secret authenticate, in a unit of work of its own
    (`notify dev` checks the phone it keeps)."""
    async with standalone_session(database_url) as session:
        return await authenticate(session, name, secret) is not None


async def authenticate(session: AsyncSession, name: str, secret: str) -> Gateway | None:
    """The gateway these HTTP Basic credentials name, or None."""
    if len(secret) > 200:
        return None
    # No gateway has such a name, and PostgreSQL cannot compare one with a null
    # character in it (anyone's Basic credentials were a 500).
    known = len(name) <= GATEWAY_NAME_CHARS and "\x00" not in name
    gateway = await gateway_repository.by_name(session, name) if known else None
    # Compared in constant time, and hashed even for an unknown name.
    digest = hash_key(secret)
    if gateway is None or not hmac.compare_digest(gateway.secret_hash, digest):
        return None
    return gateway


async def poll(
    session: AsyncSession,
    settings: Settings,
    gateway: Gateway,
    received: Poll,
    now: datetime,
) -> list[gateway_repository.Offered]:
    """Apply a gateway's poll and return what it should send. Flushes; caller commits."""
    fresh = pace(settings.gateway_rate_per_minute, gateway.last_polled_at, now)
    await gateway_repository.touch(session, gateway.id, now)
    replies = await store_incoming(session, settings, gateway, received)
    await record_updates(session, gateway, received.updates, now)
    room = protocol.MAX_OFFERED - len(replies)
    return replies + await gateway_repository.offer(session, gateway, room, fresh, now)


def pace(rate_per_minute: int, last_polled_at: datetime | None, now: datetime) -> int:
    """How many new messages a poll may hand the phone: what it can send at its rate
    since its previous poll (at least one), a full answer on its first poll."""
    if last_polled_at is None:
        return protocol.MAX_OFFERED
    seconds = max((now - last_polled_at).total_seconds(), 0.0)
    return min(protocol.MAX_OFFERED, max(1, int(rate_per_minute * seconds / 60)))


async def store_incoming(
    session: AsyncSession, settings: Settings, gateway: Gateway, received: Poll
) -> list[gateway_repository.Offered]:
    """Hand the SMS the phone received to the two-way path, all in one go (stored once
    per id, matched to a patient, STOP/START/HELP, routed to a conversation) -> the
    answers to send back to their senders, in this poll's answer, as Twilio's come back
    in its TwiML. A sender that is not a phone number is dropped; the rest stand."""
    incoming = []
    dropped = received.dropped
    for message in received.messages:
        try:
            sender = protocol.sender_e164(message.sender, gateway.country)
        except ValueError:
            dropped += 1
            continue
        incoming.append(
            IncomingMessage(
                channel=ChannelName.GATEWAY,
                provider_message_id=message.id,
                sender_e164=sender,
                text=message.content,
                received_at=message.sms_received,
            )
        )
    if dropped:
        log.warning("gateway poll: entries dropped", extra={"gateway": gateway.name, "n": dropped})
    outcomes = await message_service.receive_many(session, settings, incoming)
    return [
        gateway_repository.Offered(str(uuid.uuid4()), message.sender_e164, outcome.reply)
        for message, outcome in zip(incoming, outcomes, strict=True)
        if outcome.reply
    ]


async def record_updates(
    session: AsyncSession, gateway: Gateway, updates: list[protocol.Update], now: datetime
) -> None:
    """Append each status to its attempt's history (an identical repeat is not recorded
    again), in one statement; SENT, DELIVERED and FAILED are also reports on the attempt,
    as a provider's callback is. Updates for ids this gateway was never given are
    ignored."""
    if not updates:
        return
    recorded, known = await gateway_repository.record_updates(session, gateway.id, updates, now)
    unknown = len({u.id for u in updates}) - known
    if unknown:
        log.warning("gateway reported unknown ids", extra={"gateway": gateway.name, "n": unknown})
    reports = [
        Report(
            attempt_id=attempt.attempt_id,
            status=protocol.STATUS_REPORTS[status],
            provider_message_id=attempt.message_id,
            provider_status=status,
            error_message=reason,
        )
        for attempt in recorded
        for status, reason in zip(attempt.statuses, attempt.reasons, strict=True)
        if status in protocol.STATUS_REPORTS
    ]
    if reports:
        await provider_reports.apply_reports(session, reports)


async def _fail_on(
    session: AsyncSession,
    attempts: Sequence[tuple[int, str, str]],
    provider_status: str,
    why: Callable[[str], tuple[str, str]],
) -> Counter[str]:
    """Fail gateway `attempts` (attempt id, message id, gateway or country) as a
    provider's failure report would, so each goes to the next channel of its chain (or
    fails when none is left); `why` gives (error message, failure reason) per gateway or
    country -> how many per gateway or country."""
    if attempts:
        await provider_reports.apply_reports(
            session,
            [
                Report(
                    attempt_id=attempt_id,
                    status=AttemptStatus.FAILED,
                    provider_message_id=message_id,
                    provider_status=provider_status,
                    error_message=why(key)[0],
                    failure_reason=why(key)[1],
                )
                for attempt_id, message_id, key in attempts
            ],
        )
    return Counter(key for _, _, key in attempts)


async def take_back_from_offline(
    session: AsyncSession, settings: Settings, now: datetime, limit: int = 1000
) -> int:
    """Messages offered to a phone silent for GATEWAY_OFFLINE_AFTER_MINUTES and not yet
    acknowledged: taken back, and failed as a provider's failure report would, so each
    goes to the next channel of its chain (or fails when none is left). Flushes."""
    cutoff = now - timedelta(minutes=settings.gateway_offline_after_minutes)
    taken = await gateway_repository.take_back(session, cutoff, now, limit)
    per_gateway = await _fail_on(
        session,
        taken,
        protocol.TAKEN_BACK,
        lambda gateway: (
            f"gateway {gateway} offline",
            f"gateway phone {gateway} offline: taken back",
        ),
    )
    for gateway, count in per_gateway.items():
        GATEWAY_TAKEN_BACK.labels(gateway).inc(count)
        log.warning(
            "gateway offline: its messages go to the next channel",
            extra={"gateway": gateway, "taken_back": count},
        )
    return len(taken)


async def fall_back_unpolled(
    session: AsyncSession, settings: Settings, now: datetime, limit: int = 1000
) -> int:
    """Messages that waited GATEWAY_UNPOLLED_AFTER_MINUTES in their country's pool while
    no phone serving that country polled (none did within GATEWAY_OFFLINE_AFTER_MINUTES):
    out of the pool (`unpolled`), and failed as a provider's failure report would, with
    that reason, so each goes to the next channel of its chain, or fails when none is
    left, rather than waiting there until it expires. Flushes."""
    abandoned = await gateway_repository.abandon_unpolled(
        session,
        queued_before=now - timedelta(minutes=settings.gateway_unpolled_after_minutes),
        live_since=now - timedelta(minutes=settings.gateway_offline_after_minutes),
        now=now,
        limit=limit,
    )
    minutes = f"{settings.gateway_unpolled_after_minutes:g}"
    per_country = await _fail_on(
        session,
        abandoned,
        protocol.UNPOLLED,
        lambda country: (
            f"no gateway phone polling for {country}",
            f"no gateway phone polling for {country}: waited {minutes} min "
            "(GATEWAY_UNPOLLED_AFTER_MINUTES)",
        ),
    )
    for country, count in per_country.items():
        GATEWAY_UNPOLLED.labels(country).inc(count)
        log.warning(
            "no gateway phone polling: queued messages go to the next channel",
            extra={"country": country, "messages": count},
        )
    return len(abandoned)


async def take_back_in_own_unit(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> int:
    """`take_back_from_offline` and `fall_back_unpolled`, each in a unit of work of its
    own (the worker's cron job) -> how many messages left the phones."""
    async with sessionmaker() as session:
        taken = await take_back_from_offline(session, settings, now)
        await session.commit()
    async with sessionmaker() as session:
        taken += await fall_back_unpolled(session, settings, now)
        await session.commit()
    return taken
