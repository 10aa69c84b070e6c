"""The state machines' one table, walked pair by pair: the Python rule and the SQL that
the send and callback paths run (generated from the table) agree on real PostgreSQL,
and no state moves backward but by the documented internal step."""

from __future__ import annotations

import contextlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.appointments import repository as appointment_repository
from app.delivery import repository as delivery_repository
from app.delivery.policy import Outcome
from app.delivery.types import Report
from app.errors import Conflict
from app.models import DeliveryAttempt, Notification
from app.notifications import service as notification_service
from app.states import (
    ATTEMPT_RANK,
    BACKWARD_EVENTS,
    EVENT_SOURCES,
    EVENT_TARGET,
    NOTIFICATION_RANK,
    REPORT_EVENTS,
    SETTLE_EVENTS,
    STORED_STATES,
    AttemptStatus,
    NotificationEvent,
    NotificationState,
    attempt_moves,
    notification_move,
)
from tests.factories import make_notification, make_patient, unique_id

A = AttemptStatus
E = NotificationEvent
S = NotificationState
STATES = [S(state) for state in STORED_STATES]
NOTIFICATION_PAIRS = list(itertools.product(STATES, E))
ATTEMPT_PAIRS = list(itertools.product(A, A))

PERSON_ACTS = {
    E.CANCEL: notification_service.cancel,
    E.MUTE: notification_service.mute,
    E.UNMUTE: notification_service.unmute,
}


class TestTheTable:
    def test_every_event_has_a_target_and_sources_that_are_stored_states(self) -> None:
        assert set(EVENT_TARGET) == set(E) == set(EVENT_SOURCES)
        for sources in EVENT_SOURCES.values():
            assert sources <= set(STATES)
        assert set(NOTIFICATION_RANK) == set(STATES)

    def test_the_paths_cover_every_event_once(self) -> None:
        paths = [{E.CLAIM}, set(PERSON_ACTS), SETTLE_EVENTS, REPORT_EVENTS, {E.UNREAD_FALLBACK}]
        assert sorted(itertools.chain.from_iterable(paths)) == sorted(E)

    @pytest.mark.parametrize(("state", "event"), NOTIFICATION_PAIRS)
    def test_a_notification_never_moves_backward_but_to_try_again(self, state: S, event: E) -> None:
        target = notification_move(state, event)
        if target is None:
            return
        if event in BACKWARD_EVENTS:
            # Only back to where a message is still to be sent, and never from an end.
            assert target in (S.SCHEDULED, S.SENDING)
            # An unread reminder falls back from where its channel left it, read aside.
            allowed = (S.SENT, S.DELIVERED) if event is E.UNREAD_FALLBACK else (S.SENDING, S.SENT)
            assert state in allowed, (state, event)
        else:
            assert NOTIFICATION_RANK[target] >= NOTIFICATION_RANK[state], (state, event)

    def test_nothing_moves_a_read_notification_and_reports_never_touch_a_held_one(
        self,
    ) -> None:
        assert all(notification_move(S.READ, event) is None for event in E)
        assert all(notification_move(S.SENDING, event) is None for event in REPORT_EVENTS)

    @pytest.mark.parametrize(("old", "new"), ATTEMPT_PAIRS)
    def test_an_attempt_only_moves_up(self, old: A, new: A) -> None:
        assert attempt_moves(old, new) == (ATTEMPT_RANK[new] > ATTEMPT_RANK[old])

    def test_delivered_and_failed_stand_against_each_other_and_read_beats_both(self) -> None:
        assert not attempt_moves(A.DELIVERED, A.FAILED)
        assert not attempt_moves(A.FAILED, A.DELIVERED)
        assert attempt_moves(A.FAILED, A.READ) and attempt_moves(A.DELIVERED, A.READ)
        assert notification_move(S.FAILED, E.REPORT_READ) is S.READ
        assert notification_move(S.FAILED, E.REPORT_DELIVERED) is None


async def run_event(session: AsyncSession, notification: Notification, event: E) -> None:
    """`event` on `notification` through the code path that applies it in production."""
    if event is E.CLAIM:
        await delivery_repository.claim_due(session, 1000)
    elif event in PERSON_ACTS:
        with contextlib.suppress(Conflict):
            await PERSON_ACTS[event](session, notification.id)
    elif event in SETTLE_EVENTS:
        outcome = Outcome(EVENT_TARGET[event], channel_chain=["sms"], channel_index=0)
        await delivery_repository.settle(session, {notification.id: outcome})
    elif event is E.UNREAD_FALLBACK:
        # Taken by Imo an hour ago, with SMS next: whatever its state, due for a fallback
        # after half an hour if the table lets it fall back.
        notification.channel_chain = ["imo", "sms"]
        notification.sent_at = datetime.now(UTC) - timedelta(hours=1)
        await session.flush()
        await delivery_repository.hand_on_unread(session, {"*": 0.5}, 1000)
    else:
        await delivery_repository.raise_notifications(
            session, [(notification.id, EVENT_TARGET[event].value)]
        )


async def stored_state(session: AsyncSession, notification: Notification) -> str:
    state: str = await session.scalar(
        select(Notification.state).where(Notification.id == notification.id)
    )
    return state


@pytest.mark.asyncio(loop_scope="session")
class TestTheSqlAgrees:
    @pytest.mark.parametrize(("state", "event"), NOTIFICATION_PAIRS)
    async def test_every_notification_state_and_event(
        self, db_session: AsyncSession, state: S, event: E
    ) -> None:
        now = datetime.now(UTC)
        notification = await make_notification(
            db_session,
            await make_patient(db_session),
            state=state,
            due_at=now - timedelta(minutes=1),
            claimed_at=now if state is S.SENDING else None,
            channel_chain=["sms"],
        )
        await run_event(db_session, notification, event)
        expected = notification_move(state, event) or state
        assert await stored_state(db_session, notification) == expected

    @pytest.mark.parametrize("state", STATES)
    async def test_an_appointment_change_cancels_as_the_table_says(
        self, db_session: AsyncSession, state: S
    ) -> None:
        appointment_id = unique_id("a")
        notification = await make_notification(
            db_session, await make_patient(db_session), state=state, appointment_id=appointment_id
        )
        await appointment_repository.clear_unsent(db_session, appointment_id, "moved")
        expected = notification_move(state, E.CANCEL) or state
        assert await stored_state(db_session, notification) == expected

    @pytest.mark.parametrize(("status", "reported"), ATTEMPT_PAIRS)
    async def test_every_attempt_status_and_report(
        self, db_session: AsyncSession, status: A, reported: A
    ) -> None:
        attempt = await attempt_in(db_session, status)
        before = await attempt_row(db_session, attempt)
        report = Report(
            attempt.id,
            reported,
            provider_message_id="SM1",
            provider_status="late",
            error_code="30008",
            error_message="Unknown error",
        )
        advanced = await delivery_repository.advance_attempts(db_session, [report])
        after = await attempt_row(db_session, attempt)
        if attempt_moves(status, reported):
            assert (advanced[attempt.id].status, after["status"]) == (reported, reported)
            assert after["error_code"] == "30008"
        else:
            # A report that does not move the attempt changes nothing at all.
            assert advanced[attempt.id].status == status
            assert after == before

    @pytest.mark.parametrize(
        ("status", "answer"), list(itertools.product(A, [A.SENT, A.FAILED, A.UNCONFIRMED]))
    )
    async def test_every_attempt_status_and_write_back(
        self, db_session: AsyncSession, status: A, answer: A
    ) -> None:
        attempt = await attempt_in(db_session, status)
        result = delivery_repository.AttemptResult(attempt.id, answer, "SM1", answer, None, None)
        stored = await delivery_repository.record_attempts(db_session, [result])
        expected = answer if attempt_moves(status, answer) else status
        assert stored[attempt.id] == expected
        assert (await attempt_row(db_session, attempt))["status"] == expected

    @pytest.mark.parametrize("status", A)
    async def test_the_sweeper_marks_unconfirmed_as_the_table_says(
        self, db_session: AsyncSession, status: A
    ) -> None:
        attempt = await attempt_in(db_session, status, notification_state=S.SENDING)
        await delivery_repository.sweep_stale_sending(db_session, datetime.now(UTC))
        expected = A.UNCONFIRMED if attempt_moves(status, A.UNCONFIRMED) else status
        assert (await attempt_row(db_session, attempt))["status"] == expected


async def attempt_in(
    session: AsyncSession, status: A, *, notification_state: S = S.SENT
) -> DeliveryAttempt:
    notification = await make_notification(
        session,
        await make_patient(session),
        state=notification_state,
        channel_chain=["sms"],
        claimed_at=datetime.now(UTC) - timedelta(hours=1),
    )
    attempt = DeliveryAttempt(
        notification_id=notification.id,
        channel="sms",
        status=status,
        provider_message_id="SM1" if status is not A.SENDING else None,
    )
    session.add(attempt)
    await session.flush()
    return attempt


async def attempt_row(session: AsyncSession, attempt: DeliveryAttempt) -> dict[str, Any]:
    row = (
        await session.execute(
            select(DeliveryAttempt.__table__).where(DeliveryAttempt.id == attempt.id)
        )
    ).one()
    return dict(row._mapping)
