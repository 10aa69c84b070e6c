"""workers/answers.py, run as arq runs it: the job sends a stored answer once, asks arq to
try again later on a transient error until its last try, and the cron queues the
answers left `pending`, each under its one job id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from arq import Retry
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.channels.base import TransientChannelError
from app.messages import replies
from app.models import Message
from tests.messages.test_replies import SETTINGS, StubWhatsApp, answered, row
from tests.workers.conftest import Context, Queue
from workers.answers import hand_on_stuck_answers, send_patient_answer

pytestmark = pytest.mark.asyncio(loop_scope="session")


def context(
    sessionmaker: async_sessionmaker[AsyncSession], channel: StubWhatsApp, **job: Any
) -> Context:
    """What the job finds: the worker's dispatcher (its channels), arq's `job_try`."""
    return {
        "settings": SETTINGS,
        "sessionmaker": sessionmaker,
        "dispatcher": SimpleNamespace(channels={"whatsapp": channel}),
        "redis": Queue(),
        **job,
    }


async def test_sends_the_answer_once_however_often_the_job_runs(
    db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    answer_id, number = await answered(db_session)
    channel = StubWhatsApp()
    ctx = context(db_sessionmaker, channel, job_try=1)

    assert await send_patient_answer(ctx, answer_id) == "sent"
    assert await send_patient_answer(ctx, answer_id) == "taken"  # arq may run it twice

    assert [message.phone_e164 for message in channel.sent] == [number]
    assert (await row(db_session, answer_id)).send_state == "sent"


async def test_a_transient_error_is_retried_later_then_failed_on_the_last_try(
    db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    answer_id, _ = await answered(db_session)
    channel = StubWhatsApp(TransientChannelError("time-out"))

    for job_try in range(1, replies.SEND_TRIES):
        with pytest.raises(Retry) as retry:
            await send_patient_answer(context(db_sessionmaker, channel, job_try=job_try), answer_id)
        assert retry.value.defer_score == 5_000 * job_try  # later each time
        assert (await row(db_session, answer_id)).send_state == "pending"

    last = context(db_sessionmaker, channel, job_try=replies.SEND_TRIES)
    assert await send_patient_answer(last, answer_id) == "failed"
    assert len(channel.sent) == replies.SEND_TRIES


async def test_the_cron_queues_each_answer_left_pending_under_its_job_id(
    db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    left, _ = await answered(db_session)
    await answered(db_session)  # pending since just now: its job may still be on its way
    await db_session.execute(
        update(Message)
        .where(Message.id == left)
        .values(updated_at=datetime.now(UTC) - timedelta(hours=1))
    )
    await db_session.flush()
    ctx = context(db_sessionmaker, StubWhatsApp())

    assert await hand_on_stuck_answers(ctx) == 1

    assert ctx["redis"].jobs == [(replies.SEND_JOB, (left,), replies.send_job_id(left))]
