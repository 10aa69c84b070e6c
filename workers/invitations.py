"""Worker side of Imo invitation rounds: every worker runs an `InvitationRunner` loop; a
cron job starts the daily round and a job (`run_invitation_round`) hands a started
round to the workers. Both are safe to run on every worker and more than once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from arq import cron
from arq.cron import CronJob

from app.channels import registry as channel_registry
from app.config import Settings
from app.imo import repository as imo_repository
from app.imo import service as imo_service
from app.imo.runner import InvitationRunner, build_invitation_runner

log = logging.getLogger(__name__)
Context = dict[str, Any]


async def start(ctx: Context) -> None:
    """In the worker's startup, after the dispatcher: start the invitation loop."""
    settings: Settings = ctx["settings"]
    # Its own connections: invitations never queue reminders behind them for a socket.
    http = channel_registry.http_session(settings.imo_invitation_concurrency)
    runner = build_invitation_runner(settings, ctx["sessionmaker"], ctx["limiter_redis"], http)
    if runner is None:
        await http.close()
        log.warning("Imo is not configured: this worker runs no invitation rounds")
        return
    stop = asyncio.Event()
    ctx.update(
        invitation_http=http,
        invitation_runner=runner,
        invitation_stop=stop,
        invitation_task=asyncio.create_task(runner.run(stop), name="invitations"),
    )


async def stop(ctx: Context) -> None:
    """In the worker's shutdown: finish the batch in hand (its answers are written, the
    rest is handed back at once), then close."""
    if "invitation_task" not in ctx:
        return
    ctx["invitation_stop"].set()
    try:
        await asyncio.wait_for(ctx["invitation_task"], timeout=30)
    except TimeoutError:
        log.error("invitation loop did not stop in time; its batch resumes after the lease")
    await ctx["invitation_http"].close()


async def run_invitation_round(ctx: Context, round_id: int) -> dict[str, Any]:
    """Job: plan a started round (count its candidates) and wake this worker's loop;
    every other worker joins at its next poll. Idempotent."""
    async with ctx["sessionmaker"]() as session:
        round_ = await imo_repository.lock_round(session, round_id)
        if round_ is None:
            return {"round_id": round_id, "state": "gone"}
        if round_.state == "running":
            await imo_service.plan_round(session, round_)
        state, candidates = round_.state, round_.candidates
        await session.commit()
    runner: InvitationRunner | None = ctx.get("invitation_runner")
    if runner is not None:
        runner.wake()
    log.info(
        "invitation round handed to the workers",
        extra={"round_id": round_id, "candidates": candidates},
    )
    return {"round_id": round_id, "state": state, "candidates": candidates}


async def start_scheduled_invitation_round(ctx: Context) -> dict[str, Any]:
    """Cron: start today's round, unless one is running. Safe on every worker: the
    trigger key makes it one round a day whoever asks first."""
    settings: Settings = ctx["settings"]
    now = datetime.now(UTC)
    async with ctx["sessionmaker"]() as session:
        try:
            round_ = await imo_service.start_round(
                session,
                settings,
                trigger="schedule",
                now=now,
                trigger_key=f"schedule:{now.date().isoformat()}",
            )
        except imo_service.RoundRunning as running:
            log.info(
                "scheduled invitation round skipped: one is running",
                extra={"round_id": running.round_id},
            )
            return {"round_id": running.round_id, "started": False}
        except imo_service.ImoNotConfigured:
            return {"round_id": None, "started": False}
        round_id = round_.id
        await session.commit()
    return await run_invitation_round(ctx, round_id)


def scheduled_round_cron(settings: Settings) -> CronJob:
    return cron(
        start_scheduled_invitation_round,
        hour={settings.imo_invitation_hour_utc},
        minute={0},
        second={0},
        unique=True,
    )
