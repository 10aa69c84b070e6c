"""The SQL of inbound email and address status."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    DeliveryAttempt,
    EmailAddress,
    EmailAddressEvent,
    InboundEmail,
    StaffMember,
)
from app.models.email_address import EmailStatus
from app.states import ChannelName


async def insert_inbound(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Store an inbound email -> its id, or None when one with its dedup key is stored
    (a retry: waits for a concurrent first copy to commit, then is a repeat)."""
    return await session.scalar(
        insert(InboundEmail)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(InboundEmail.id)
    )


async def lock_addresses(
    session: AsyncSession, addresses: Sequence[str], now: datetime
) -> dict[str, EmailAddress]:
    """The rows of `addresses`, created `unknown` if need be, locked for this
    transaction in address order (two batches naming the same addresses cannot
    deadlock)."""
    ordered = sorted(set(addresses))
    await session.execute(
        insert(EmailAddress)
        .values([{"address": a, "status": EmailStatus.UNKNOWN, "changed_at": now} for a in ordered])
        .on_conflict_do_nothing(index_elements=["address"])
    )
    rows = await session.scalars(
        select(EmailAddress)
        .where(EmailAddress.address.in_(ordered))
        .order_by(EmailAddress.address)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {row.address: row for row in rows}


async def staff_with_address(session: AsyncSession, address: str) -> str | None:
    """The staff member whose email is `address` (lower case), if one is: the most
    recently updated where two share it."""
    return await session.scalar(
        select(StaffMember.id)
        .where(func.lower(StaffMember.email) == address)
        .order_by(StaffMember.updated_at.desc(), StaffMember.id)
        .limit(1)
    )


async def known_event_ids(session: AsyncSession, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    rows = await session.scalars(
        select(EmailAddressEvent.provider_event_id).where(
            EmailAddressEvent.provider_event_id.in_(ids)
        )
    )
    return {row for row in rows if row is not None}


async def insert_events(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(EmailAddressEvent).on_conflict_do_nothing(), rows)


async def address(session: AsyncSession, address: str) -> EmailAddress | None:
    return await session.get(EmailAddress, address)


async def history_page(
    session: AsyncSession, address: str, before: tuple[datetime, int] | None, limit: int
) -> Sequence[EmailAddressEvent]:
    """An address's events, newest first: `limit + 1` rows after the cursor."""
    query = select(EmailAddressEvent).where(EmailAddressEvent.address == address)
    if before is not None:
        query = query.where(
            tuple_(EmailAddressEvent.occurred_at, EmailAddressEvent.id) < tuple_(*before)
        )
    rows = await session.scalars(
        query.order_by(EmailAddressEvent.occurred_at.desc(), EmailAddressEvent.id.desc()).limit(
            limit + 1
        )
    )
    return rows.all()


async def blocked_of(session: AsyncSession, addresses: Sequence[str]) -> dict[str, str]:
    """Of `addresses` (normalised), the blocked ones and why."""
    if not addresses:
        return {}
    rows = await session.execute(
        select(EmailAddress.address, EmailAddress.reason).where(
            EmailAddress.address.in_(list(addresses)),
            EmailAddress.status == EmailStatus.BLOCKED,
        )
    )
    return {row.address: row.reason or "blocked" for row in rows}


async def unmatched_page(
    session: AsyncSession, after: tuple[datetime, int] | None, limit: int
) -> Sequence[InboundEmail]:
    """Unmatched inbound emails, newest first."""
    query = select(InboundEmail).where(InboundEmail.outcome == "unmatched")
    if after is not None:
        query = query.where(tuple_(InboundEmail.received_at, InboundEmail.id) < tuple_(*after))
    rows = await session.scalars(
        query.order_by(InboundEmail.received_at.desc(), InboundEmail.id.desc()).limit(limit + 1)
    )
    return rows.all()


async def email_attempts(session: AsyncSession, message_ids: Collection[str]) -> dict[str, int]:
    """Our Message-IDs -> the email attempts that recorded them (by the attempts'
    unique (channel, provider_message_id) index); ids of no attempt are left out."""
    if not message_ids:
        return {}
    rows = await session.execute(
        select(DeliveryAttempt.provider_message_id, DeliveryAttempt.id).where(
            DeliveryAttempt.channel == ChannelName.EMAIL,
            DeliveryAttempt.provider_message_id.in_(list(message_ids)),
        )
    )
    return {message_id: attempt_id for message_id, attempt_id in rows if message_id is not None}
