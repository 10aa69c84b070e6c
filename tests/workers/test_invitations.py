"""The worker side of invitation rounds (workers/invitations.py): the invitation loop's
start and stop hooks, the job that hands a started round to the workers, and the daily
cron, run the way arq runs them on real PostgreSQL and Redis and the fake Imo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from sqlalchemy import select

from app.models import ImoInvitationRound
from tests.fake_servers import FakeImo
from tests.imo.helpers import invite_phone, round_state, seed_patients, start_round
from tests.stack import Database
from tests.waiting import wait_until
from tests.workers.conftest import Context, ContextFactory
from workers.invitations import (
    run_invitation_round,
    scheduled_round_cron,
    start,
    start_scheduled_invitation_round,
    stop,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def looping(context: ContextFactory) -> AsyncIterator[Context]:
    """A worker's context with its invitation loop started. The loop polls only every
    minute: a round it takes up within seconds was handed to it by the job."""
    ctx = context(imo_invitation_poll_seconds=60)
    await start(ctx)
    try:
        yield ctx
    finally:
        await stop(ctx)


async def rounds(db: Database) -> list[ImoInvitationRound]:
    async with db.sessionmaker() as session:
        return list(await session.scalars(select(ImoInvitationRound)))


class TestLoop:
    async def test_start_runs_the_loop_and_stop_ends_it_and_closes_its_connections(
        self, context: ContextFactory
    ) -> None:
        ctx = context()
        await start(ctx)
        task = ctx["invitation_task"]
        assert not task.done()
        await stop(ctx)
        assert task.done() and task.exception() is None
        assert ctx["invitation_http"].closed

    async def test_without_imo_no_loop_starts_and_stop_does_nothing(
        self, context: ContextFactory
    ) -> None:
        ctx = context(imo_base_url="", imo_username="")
        await start(ctx)
        assert "invitation_task" not in ctx
        await stop(ctx)


class TestRunInvitationRound:
    async def test_plans_the_round_and_wakes_the_loop_which_invites_everyone_once(
        self, db: Database, fake_imo: FakeImo, looping: Context
    ) -> None:
        phones = [invite_phone(n, 3) for n in range(12)]
        async with db.engine.begin() as connection:
            await seed_patients(connection, phones)
        round_id = await start_round(db, looping["settings"])

        handed = await run_invitation_round(looping, round_id)

        assert handed == {"round_id": round_id, "state": "running", "candidates": 12}
        await wait_until(lambda: _completed(db, round_id), timeout=10, interval=0.05)
        assert fake_imo.requests_per_phone() == dict.fromkeys(phones, 1)
        # arq may run a job twice: the second time it plans nothing and sends nothing.
        again = await run_invitation_round(looping, round_id)
        assert again == {"round_id": round_id, "state": "completed", "candidates": 12}
        assert fake_imo.requests_per_phone() == dict.fromkeys(phones, 1)

    async def test_a_round_that_is_gone_is_said_so(self, context: ContextFactory) -> None:
        assert await run_invitation_round(context(), 987654321) == {
            "round_id": 987654321,
            "state": "gone",
        }


class TestScheduledRound:
    async def test_runs_daily_at_the_configured_hour_on_every_worker(
        self, context: ContextFactory
    ) -> None:
        job = scheduled_round_cron(context(imo_invitation_hour_utc=4)["settings"])
        assert (job.hour, job.minute, job.second, job.unique) == ({4}, {0}, {0}, True)

    async def test_workers_asking_at_once_and_again_start_one_round(
        self, db: Database, context: ContextFactory
    ) -> None:
        async with db.engine.begin() as connection:
            await seed_patients(connection, [invite_phone(n, 3) for n in range(5)])

        first, second = await asyncio.gather(
            start_scheduled_invitation_round(context()),
            start_scheduled_invitation_round(context()),
        )
        again = await start_scheduled_invitation_round(context())

        [round_] = await rounds(db)
        today = datetime.now(UTC).date().isoformat()
        assert (round_.trigger, round_.trigger_key) == ("schedule", f"schedule:{today}")
        for answer in (first, second, again):
            assert answer == {"round_id": round_.id, "state": "running", "candidates": 5}

    async def test_a_running_round_is_left_alone(
        self, db: Database, context: ContextFactory
    ) -> None:
        running = await start_round(db, context()["settings"])
        answer = await start_scheduled_invitation_round(context())
        assert answer == {"round_id": running, "started": False}
        assert [r.id for r in await rounds(db)] == [running]

    async def test_without_imo_nothing_starts(self, db: Database, context: ContextFactory) -> None:
        answer = await start_scheduled_invitation_round(context(imo_base_url="", imo_username=""))
        assert answer == {"round_id": None, "started": False}
        assert await rounds(db) == []


async def _completed(db: Database, round_id: int) -> bool:
    return await round_state(db, round_id) == "completed"
