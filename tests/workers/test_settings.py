"""The worker process (workers/settings.py): its start-up and shutdown hooks, which run
the dispatch loops, and the sweeper cron, run the way arq runs them, on real PostgreSQL
and Redis and the fakes over sockets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import func, insert, select

from app.models import DeliveryAttempt, DispatchLease, Notification
from tests.clock import daytime_zone
from tests.factories import make_notification, make_patient
from tests.fake_servers import FakeTwilio
from tests.stack import Database
from tests.waiting import wait_until
from tests.workers.conftest import Context, ContextFactory
from workers.settings import (
    WorkerSettings,
    _sweep_seconds,
    shutdown,
    startup,
    sweep_stale_sending,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

Worker = Callable[[], AbstractAsyncContextManager[Context]]


@pytest_asyncio.fixture(loop_scope="session")
async def worker(worker_settings: None) -> Worker:
    """`async with worker() as ctx`: arq's start-up hook has run on `ctx` (dispatch loops
    and the invitation loop running); its shutdown hook runs on the way out."""

    @asynccontextmanager
    async def run() -> AsyncIterator[Context]:
        ctx: Context = {}
        await startup(ctx)
        try:
            yield ctx
        finally:
            await shutdown(ctx)

    return run


def phones(count: int, series: int = 0) -> list[str]:
    """Bangladeshi mobiles ending in 3: the fakes accept them."""
    return [f"+88018{series:02d}{n:05d}3" for n in range(count)]


async def patients_with_reminders(
    db: Database, numbers: list[str], *, state: str = "scheduled", **values: object
) -> list[Notification]:
    """One daytime patient without Imo per number, each with one due reminder in `state`;
    committed."""
    made = []
    async with db.sessionmaker() as session:
        for number in numbers:
            patient = await make_patient(
                session,
                mobile_e164=number,
                phone_numbers=[{"number": number, "type": "mobile"}],
                time_zone=daytime_zone(),
            )
            made.append(
                await make_notification(
                    session, patient, state=state, due_at=datetime.now(UTC), **values
                )
            )
        await session.commit()
    return made


async def states(db: Database) -> dict[str, int]:
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(Notification.state, func.count()).group_by(Notification.state)
        )
        return {state: count for state, count in rows}


async def all_sent(db: Database) -> bool:
    return set(await states(db)) == {"sent"}


class TestDispatchLoops:
    async def test_startup_starts_loops_that_send_what_is_due_and_shutdown_stops_them(
        self, db: Database, fake_twilio: FakeTwilio, worker: Worker
    ) -> None:
        async with worker() as ctx:
            loops = ctx["dispatch_tasks"]
            assert loops and not any(loop.done() for loop in loops)
            [number] = phones(1)
            await patients_with_reminders(db, [number])
            await wait_until(lambda: all_sent(db), timeout=10)
        assert all(loop.done() and loop.exception() is None for loop in loops)
        assert ctx["invitation_task"].done()
        assert ctx["http"].closed and ctx["invitation_http"].closed
        assert fake_twilio.messages_per_phone() == {number: 1}

    async def test_two_workers_send_each_due_reminder_once(
        self, db: Database, fake_twilio: FakeTwilio, worker: Worker
    ) -> None:
        numbers = phones(60)
        async with worker(), worker():
            await patients_with_reminders(db, numbers)
            await wait_until(lambda: all_sent(db), timeout=30)
        assert fake_twilio.messages_per_phone() == dict.fromkeys(numbers, 1)

    async def test_shutdown_of_a_worker_that_never_started_does_nothing(self) -> None:
        await shutdown({})


class TestLeases:
    async def test_a_worker_holds_a_lease_while_it_runs_and_drops_it_when_it_stops(
        self, db: Database, fake_twilio: FakeTwilio, worker: Worker
    ) -> None:
        numbers = phones(5, series=3)
        async with worker() as ctx:
            lease_id = ctx["dispatcher"].lease_id
            await wait_until(lambda: lease_of(db, lease_id), timeout=10)
            [[expires_at]] = await lease_of(db, lease_id)
            assert expires_at > datetime.now(UTC) + timedelta(seconds=5)
            made = await patients_with_reminders(db, numbers)
            await wait_until(lambda: all_sent(db), timeout=10)
            async with db.sessionmaker() as session:
                # Settled: no longer under the lease.
                leases = await session.scalars(
                    select(Notification.lease_id).where(Notification.id.in_([n.id for n in made]))
                )
                assert set(leases) == {None}
        assert await lease_of(db, lease_id) == []

    async def test_a_dead_workers_claims_are_taken_over_as_soon_as_its_lease_runs_out(
        self, db: Database, fake_twilio: FakeTwilio, worker: Worker
    ) -> None:
        """Claimed a second ago (far from SENDING_STALE_AFTER_SECONDS), by a worker whose
        lease ran out: sent now if no attempt had begun, else `unconfirmed`. A claim under
        a lease still renewed stays with its worker."""
        dead, alive = uuid.uuid4(), uuid.uuid4()
        async with db.sessionmaker() as session:
            await session.execute(
                insert(DispatchLease),
                [
                    {"id": dead, "holder": "gone:1", "expires_at": datetime.now(UTC)},
                    {
                        "id": alive,
                        "holder": "busy:2",
                        "expires_at": datetime.now(UTC) + timedelta(minutes=5),
                    },
                ],
            )
            await session.commit()
        just_now = datetime.now(UTC) - timedelta(seconds=1)
        never_sent = await patients_with_reminders(
            db, phones(10, series=4), state="sending", claimed_at=just_now, lease_id=dead
        )
        in_flight = await patients_with_reminders(
            db, phones(10, series=5), state="sending", claimed_at=just_now, lease_id=dead
        )
        held = await patients_with_reminders(
            db, phones(10, series=6), state="sending", claimed_at=just_now, lease_id=alive
        )
        async with db.sessionmaker() as session:
            session.add_all(
                DeliveryAttempt(notification_id=n.id, channel="sms", status="sending")
                for n in in_flight
            )
            await session.commit()

        async with worker():

            async def taken_over() -> bool:
                return await states_of(db, never_sent + in_flight) == {"sent": 20}

            await wait_until(taken_over, timeout=10)
        assert await states_of(db, held) == {"sending": 10}
        # Only those without an attempt went out (once); the others were never resent.
        assert fake_twilio.messages_per_phone() == dict.fromkeys(phones(10, series=4), 1)
        async with db.sessionmaker() as session:
            statuses = await session.scalars(
                select(DeliveryAttempt.status).where(
                    DeliveryAttempt.notification_id.in_([n.id for n in in_flight])
                )
            )
            assert list(statuses) == ["unconfirmed"] * 10


async def lease_of(db: Database, lease_id: uuid.UUID) -> list[tuple[datetime]]:
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(DispatchLease.expires_at).where(DispatchLease.id == lease_id)
        )
        return [tuple(row) for row in rows]


async def states_of(db: Database, made: list[Notification]) -> dict[str, int]:
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(Notification.state, func.count())
            .where(Notification.id.in_([n.id for n in made]))
            .group_by(Notification.state)
        )
        return {state: count for state, count in rows}


class TestSweeper:
    async def test_runs_on_every_worker_from_second_17_at_the_configured_interval(self) -> None:
        assert _sweep_seconds(60) == {17}
        assert _sweep_seconds(20) == {17, 37, 57}
        assert _sweep_seconds(15) == {2, 17, 32, 47}
        [sweeper] = [
            job for job in WorkerSettings.cron_jobs if job.coroutine is sweep_stale_sending
        ]
        assert sweeper.unique and sweeper.run_at_startup
        assert sweep_stale_sending in WorkerSettings.functions

    async def test_two_workers_at_once_settle_each_leftover_once(
        self, db: Database, context: ContextFactory
    ) -> None:
        long_ago = datetime.now(UTC) - timedelta(minutes=10)
        never_sent = await patients_with_reminders(
            db, phones(20, series=1), state="sending", claimed_at=long_ago
        )
        in_flight = await patients_with_reminders(
            db, phones(20, series=2), state="sending", claimed_at=long_ago
        )
        async with db.sessionmaker() as session:
            session.add_all(
                DeliveryAttempt(notification_id=n.id, channel="sms", status="sending")
                for n in in_flight
            )
            await session.commit()

        results = await asyncio.gather(
            sweep_stale_sending(context()), sweep_stale_sending(context())
        )

        assert tuple(map(sum, zip(*results, strict=True))) == (20, 20)
        assert await states(db) == {"scheduled": 20, "sent": 20}
        async with db.sessionmaker() as session:
            attempts = await session.execute(
                select(DeliveryAttempt.notification_id, DeliveryAttempt.status)
            )
            assert sorted(tuple(row) for row in attempts) == sorted(
                (n.id, "unconfirmed") for n in in_flight
            )
        # Requeued, the never-sent ones are due at once for the dispatch loops.
        async with db.sessionmaker() as session:
            due = await session.scalars(
                select(Notification.id).where(
                    Notification.state == "scheduled", Notification.due_at <= func.now()
                )
            )
            assert set(due) == {n.id for n in never_sent}
        # Nothing left: the next run, on any worker, changes nothing.
        assert await sweep_stale_sending(context()) == (0, 0)
