"""Address status: the rules, applied in batches, and the explicit unblock."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.email import addresses
from app.email import status as email_status
from app.email.rules import AddressEvent, AddressEventKind, AddressState, apply
from app.errors import InvalidInput
from app.models import WebhookEvent
from app.models.email_address import EmailStatus

K = AddressEventKind
T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def event(kind: AddressEventKind, minutes: int = 0, address: str = "a@example.com", **kw: object):  # type: ignore[no-untyped-def]
    return AddressEvent(address, kind, "sendgrid", T0 + timedelta(minutes=minutes), **kw)  # type: ignore[arg-type]


UNKNOWN = AddressState(EmailStatus.UNKNOWN, None, None)


class TestRules:
    @pytest.mark.parametrize("kind", [K.HARD_BOUNCE, K.DROPPED, K.COMPLAINT, K.UNSUBSCRIBE])
    def test_these_block(self, kind: AddressEventKind) -> None:
        assert apply(UNKNOWN, event(kind)).status == EmailStatus.BLOCKED

    @pytest.mark.parametrize("kind", [K.SOFT_BOUNCE, K.UNBLOCKED])
    def test_these_change_nothing_here(self, kind: AddressEventKind) -> None:
        assert apply(UNKNOWN, event(kind)) == UNKNOWN

    def test_a_delivery_does_not_unblock(self) -> None:
        blocked = apply(UNKNOWN, event(K.HARD_BOUNCE, detail="550 5.1.1"))
        assert blocked.reason == "hard bounce: 550 5.1.1"
        assert apply(blocked, event(K.DELIVERED, 5)) == blocked
        assert apply(UNKNOWN, event(K.DELIVERED)).status == EmailStatus.DELIVERABLE

    def test_an_event_from_before_the_unblock_does_not_block_again(self) -> None:
        unblocked = apply(apply(UNKNOWN, event(K.HARD_BOUNCE)), event(K.UNBLOCKED, 10))
        assert unblocked.status == EmailStatus.UNKNOWN
        assert apply(unblocked, event(K.HARD_BOUNCE, 5)) == unblocked
        assert apply(unblocked, event(K.HARD_BOUNCE, 15)).status == EmailStatus.BLOCKED


pytestmark_db = pytest.mark.asyncio(loop_scope="session")


def fresh() -> str:
    return f"p.{uuid.uuid4().hex[:10]}@example.com"


@pytestmark_db
class TestRecord:
    async def test_a_batch_in_any_order_with_repeats(self, db_session: AsyncSession) -> None:
        a, b = fresh(), fresh()
        events = [
            event(K.HARD_BOUNCE, 2, a, provider_event_id=f"sg:{uuid.uuid4()}"),
            event(K.DELIVERED, 1, a, provider_event_id=f"sg:{uuid.uuid4()}"),
            event(K.DELIVERED, 1, b, provider_event_id="sg:same-" + b),
            event(K.DELIVERED, 1, b, provider_event_id="sg:same-" + b),
        ]
        assert await email_status.record(db_session, events) == 3
        assert await email_status.record(db_session, events) == 0
        page_a = await email_status.status(db_session, a, None, 10)
        assert page_a.status == EmailStatus.BLOCKED
        assert [(e.event, e.status) for e in page_a.history] == [
            ("hard_bounce", "blocked"),
            ("delivered", "deliverable"),
        ]
        assert (await email_status.status(db_session, b, None, 10)).status == "deliverable"

    async def test_unblock_is_explicit_and_in_the_history(self, db_session: AsyncSession) -> None:
        address = fresh()
        await email_status.record(db_session, [event(K.COMPLAINT, 0, address)])
        assert await email_status.unblock(db_session, address.upper(), by="api key 7")
        assert not await email_status.unblock(db_session, address, by="api key 7")
        page = await email_status.status(db_session, address, None, 10)
        assert page.status == EmailStatus.UNKNOWN
        assert page.history[0].event == "unblocked" and page.history[0].detail == "by api key 7"
        assert await email_status.blocked(db_session, [address]) == {}

    async def test_history_pages(self, db_session: AsyncSession) -> None:
        address = fresh()
        await email_status.record(
            db_session,
            [
                event(K.DELIVERED, m, address, provider_event_id=f"sg:{uuid.uuid4()}")
                for m in range(5)
            ],
        )
        first = await email_status.status(db_session, address, None, 3)
        assert len(first.history) == 3 and first.next_cursor
        second = await email_status.status(db_session, address, first.next_cursor, 3)
        assert len(second.history) == 2 and second.next_cursor is None

    async def test_not_an_address_is_a_422(self, db_session: AsyncSession) -> None:
        with pytest.raises(InvalidInput):
            await email_status.status(db_session, "not-an-address", None, 10)

    async def test_blocked_answers_with_the_reason(self, db_session: AsyncSession) -> None:
        address = fresh()
        await email_status.record(db_session, [event(K.UNSUBSCRIBE, 0, address)])
        assert await email_status.blocked(db_session, [address.upper(), fresh()]) == {
            address: "unsubscribed"
        }


@pytestmark_db
class TestStatusEvents:
    """`email.blocked` / `email.unblocked` for webhooks when an address's status moves
    into or out of `blocked`: the address hashed and masked, never whole."""

    async def events_about(self, session: AsyncSession, address: str) -> list[WebhookEvent]:
        digest = hashlib.sha256(address.encode()).hexdigest()
        rows = await session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.data["address_sha256"].astext == digest)
            # One transaction's events share a time: `blocked` sorts before `unblocked`.
            .order_by(WebhookEvent.type)
        )
        return list(rows)

    async def test_blocked_then_unblocked_each_once(self, db_session: AsyncSession) -> None:
        address = fresh()
        bounce = event(
            K.HARD_BOUNCE,
            0,
            address,
            detail=f"550 5.1.1 <{address.upper()}> no such user",
            provider_event_id=f"sg:{uuid.uuid4()}",
        )
        await email_status.record(db_session, [event(K.DELIVERED, -5, address), bounce])
        # Blocked already: another bounce, a delivery, a repeat raise nothing.
        await email_status.record(
            db_session,
            [bounce, event(K.COMPLAINT, 1, address), event(K.DELIVERED, 2, address)],
        )
        await email_status.unblock(db_session, address, by="api key 7")
        events = await self.events_about(db_session, address)
        assert [e.type for e in events] == ["email.blocked", "email.unblocked"]
        blocked, unblocked = (e.data for e in events)
        assert events[0].patient_id is None
        assert blocked == {
            "address_sha256": hashlib.sha256(address.encode()).hexdigest(),
            "address_masked": addresses.mask(address),
            "status": "blocked",
            "event": "hard_bounce",
            "source": "sendgrid",
            "reason": f"hard bounce: 550 5.1.1 <{addresses.mask(address)}> no such user",
            "occurred_at": T0.isoformat(),
        }
        assert (unblocked["status"], unblocked["event"], unblocked["source"]) == (
            "unknown",
            "unblocked",
            "api",
        )
        assert unblocked["reason"] == "by api key 7"
        for data in (blocked, unblocked):
            assert address not in str(data).lower()

    async def test_no_event_for_what_never_blocks(self, db_session: AsyncSession) -> None:
        address = fresh()
        await email_status.record(
            db_session, [event(K.DELIVERED, 0, address), event(K.SOFT_BOUNCE, 1, address)]
        )
        assert await self.events_about(db_session, address) == []
