"""workers/broadcasts.py, run as arq runs it: the fan-out job schedules each member once
however often it runs, and the cron hands a fan-out that stood still back to a worker
(and leaves a moving one alone)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.broadcasts import service as broadcast_service
from app.config import Settings
from app.models import Broadcast, Notification
from tests.broadcasts.test_service import broadcast, group_of, put_template
from tests.factories import make_patient, unique_id
from tests.workers.conftest import Context, Queue
from workers.broadcasts import fan_out_broadcast, resume_stalled_broadcasts

pytestmark = pytest.mark.asyncio(loop_scope="session")


def context(sessionmaker: async_sessionmaker[AsyncSession]) -> Context:
    # One lane: lanes run on connections of their own, and this sessionmaker is one
    # connection (tests/broadcasts/test_lanes.py runs lanes on a committing database).
    settings = Settings().model_copy(
        update={"broadcast_chunk_size": 2, "broadcast_fan_out_lanes": 1}
    )
    return {"settings": settings, "sessionmaker": sessionmaker, "redis": Queue()}


async def started_broadcast(api: httpx.AsyncClient, db_session: AsyncSession, members: int) -> str:
    await put_template(api, "camp.invite", "en", "{patient_name}: camp in {area} on {day}")
    tag = unique_id("t")
    for n in range(members):
        await make_patient(db_session, id=f"{tag}-{n}", tags=[tag], attributes={"area": "Mirpur"})
    answer = await api.post("/v1/broadcasts", json=broadcast(await group_of(api, tag)))
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def messages(db_session: AsyncSession, broadcast_id: str) -> int:
    count = await db_session.scalar(
        select(func.count()).where(Notification.broadcast_id == broadcast_id)
    )
    return int(count or 0)


async def test_the_fan_out_job_schedules_every_member_once_however_often_it_runs(
    api: httpx.AsyncClient,
    db_session: AsyncSession,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    broadcast_id = await started_broadcast(api, db_session, members=5)
    ctx = context(db_sessionmaker)

    first = await fan_out_broadcast(ctx, broadcast_id)
    again = await fan_out_broadcast(ctx, broadcast_id)  # arq may run a job twice

    assert first == {"broadcast_id": broadcast_id, "state": "fanned_out", "members": 5}
    assert again["members"] == 5
    assert await messages(db_session, broadcast_id) == 5


async def test_the_cron_hands_a_stalled_fan_out_to_a_worker_and_leaves_a_moving_one(
    api: httpx.AsyncClient,
    db_session: AsyncSession,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    stalled = await started_broadcast(api, db_session, members=1)
    moving = await started_broadcast(api, db_session, members=1)
    # Nobody moved `stalled` for an hour; `moving` was just started.
    await db_session.execute(
        update(Broadcast)
        .where(Broadcast.id == uuid.UUID(stalled))
        .values(updated_at=datetime.now(UTC) - timedelta(hours=1))
    )
    await db_session.flush()
    ctx = context(db_sessionmaker)

    assert await resume_stalled_broadcasts(ctx) == 1

    [(name, args, job_id)] = ctx["redis"].jobs
    assert (name, args) == (broadcast_service.FAN_OUT_JOB, (stalled,))
    # Not the start's job id, which arq would take for a job already done.
    assert job_id is not None
    assert job_id.startswith(f"broadcast:{stalled}:")
    assert job_id != broadcast_service.fan_out_job_id(uuid.UUID(stalled))
    assert moving not in job_id
    # The job it queued finishes the fan-out, and the cron then has nothing to resume.
    assert (await fan_out_broadcast(ctx, stalled))["state"] == "fanned_out"
    assert await resume_stalled_broadcasts(ctx) == 0
