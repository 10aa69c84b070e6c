"""Address deliverability: record what providers and bounces say, answer it, unblock.

The rules are in app/email/rules.py; this applies them to the stored addresses, a
batch at a time (a SendGrid post holds hundreds of events), with a few statements per
batch whatever its size.

An address that becomes `blocked`, or stops being, raises `email.blocked` or
`email.unblocked` for webhooks, in the same transaction. The event never carries the
address: its SHA-256 (of the normalised address, lower-case hex), which a clinic system
can compute for the addresses it holds to find whose it is, and its masked form
(`r***@e***.com`) for people to read; the reason has the address masked too.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.email import addresses
from app.email import repository as email_repository
from app.email.rules import AddressEvent, AddressEventKind, AddressState, apply
from app.errors import field_error
from app.models import EmailAddressEvent
from app.models.email_address import EmailStatus
from app.webhooks import service as webhook_service
from app.webhooks.events import EventType

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StatusPage:
    address: str
    status: EmailStatus
    reason: str | None
    changed_at: datetime | None
    history: list[EmailAddressEvent]
    next_cursor: str | None


def address_of(text: str, field: str = "address") -> str:
    """A normalised address from the API. Raises InvalidInput naming `field`."""
    try:
        return addresses.normalise(text)
    except addresses.InvalidAddress as exc:
        raise field_error(field, str(exc)) from exc


async def record(
    session: AsyncSession, events: Sequence[AddressEvent], *, now: datetime | None = None
) -> int:
    """Apply `events` (any order; applied oldest first) -> how many were new. A repeat
    (same provider event id) changes nothing. Flushes; holds the addresses' row locks
    until commit."""
    if not events:
        return 0
    now = now or datetime.now(UTC)
    rows = await email_repository.lock_addresses(session, [e.address for e in events], now)
    known = await email_repository.known_event_ids(
        session, [e.provider_event_id for e in events if e.provider_event_id]
    )
    states = {
        a: AddressState(EmailStatus(r.status), r.reason, r.unblocked_at) for a, r in rows.items()
    }
    seen: set[str] = set()
    stored: list[dict[str, object]] = []
    announced: list[tuple[EventType, str | None, dict[str, object]]] = []
    for event in sorted(events, key=lambda e: e.occurred_at):
        if event.provider_event_id is not None:
            if event.provider_event_id in known or event.provider_event_id in seen:
                continue
            seen.add(event.provider_event_id)
        before = states[event.address]
        after = apply(before, event)
        states[event.address] = after
        stored.append(
            {
                "address": event.address,
                "event": event.kind.value,
                "source": event.source,
                "status": after.status.value,
                "detail": event.detail[:300] if event.detail else None,
                "provider_event_id": event.provider_event_id,
                "occurred_at": event.occurred_at,
            }
        )
        if after.status != before.status:
            # Which address is in the history table; the log says only that one changed.
            log.info(
                "email address status changed",
                extra={
                    "address": addresses.mask(event.address),
                    "status": after.status.value,
                    "event": event.kind.value,
                    "source": event.source,
                },
            )
            webhook_event = _status_event(event, before, after)
            if webhook_event is not None:
                announced.append(webhook_event)
    await email_repository.insert_events(session, stored)
    for address, state in states.items():
        row = rows[address]
        if (row.status, row.reason) != (state.status.value, state.reason):
            row.status = state.status
            row.reason = state.reason
            row.changed_at = now
        row.unblocked_at = state.unblocked_at
    await session.flush()
    if announced:
        await webhook_service.emit_many(session, announced)
    return len(stored)


def address_hash(address: str) -> str:
    """How a webhook names an address: SHA-256 of its normal form, lower-case hex."""
    return hashlib.sha256(address.encode("utf-8")).hexdigest()


def _status_event(
    event: AddressEvent, before: AddressState, after: AddressState
) -> tuple[EventType, str | None, dict[str, object]] | None:
    """`email.blocked` / `email.unblocked` when `event` moved the address into or out of
    `blocked`; None otherwise. No patient: an address may be several patients' or a
    staff member's (and the events of no patient are delivered in no set order:
    `occurred_at` orders them)."""
    if after.status == before.status:
        return None
    if after.status == EmailStatus.BLOCKED:
        kind = EventType.EMAIL_BLOCKED
    elif before.status == EmailStatus.BLOCKED:
        kind = EventType.EMAIL_UNBLOCKED
    else:
        return None
    reason = after.reason if kind == EventType.EMAIL_BLOCKED else event.detail
    return (
        kind,
        None,
        {
            "address_sha256": address_hash(event.address),
            "address_masked": addresses.mask(event.address),
            "status": after.status.value,
            "event": event.kind.value,
            "source": event.source,
            "reason": addresses.mask_in(reason, event.address) if reason else None,
            "occurred_at": event.occurred_at.isoformat(),
        },
    )


async def status(session: AsyncSession, address: str, cursor: str | None, limit: int) -> StatusPage:
    """An address's status and a page of its history, newest first. Raises
    InvalidInput for what is not an address, or a cursor this list did not hand out."""
    normalised = address_of(address)
    before = pagination.decode(cursor, datetime, int) if cursor else None
    row = await email_repository.address(session, normalised)
    events = await email_repository.history_page(
        session, normalised, (before[0], before[1]) if before else None, limit
    )
    page, next_cursor = pagination.split(events, limit, lambda e: (e.occurred_at, e.id))
    if row is None:
        return StatusPage(normalised, EmailStatus.UNKNOWN, None, None, page, next_cursor)
    return StatusPage(
        normalised, EmailStatus(row.status), row.reason, row.changed_at, page, next_cursor
    )


async def unblock(
    session: AsyncSession, address: str, *, by: str, now: datetime | None = None
) -> bool:
    """Unblock `address` -> whether it was blocked. Logged (masked), and written to its
    history with who did it. Raises InvalidInput for what is not an address."""
    normalised = address_of(address)
    now = now or datetime.now(UTC)
    row = await email_repository.address(session, normalised)
    if row is None or row.status != EmailStatus.BLOCKED:
        return False
    await record(
        session,
        [AddressEvent(normalised, AddressEventKind.UNBLOCKED, "api", now, detail=f"by {by}"[:300])],
        now=now,
    )
    log.info("email address unblocked", extra={"address": addresses.mask(normalised), "by": by})
    return True


async def blocked(session: AsyncSession, recipients: Sequence[str]) -> dict[str, str]:
    """Of `recipients` (any case), the blocked ones (normalised) and why: checked
    before anything is sent to them."""
    return await email_repository.blocked_of(session, [r.strip().lower() for r in recipients])
