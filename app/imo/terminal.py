"""An Imo invitation round run in this process, shown in a terminal (`notify invite`).

Workers that are running join the round as they would any other; the progress bar
shows the whole round. Heavy modules are imported inside `run_round`, so that `notify
--help` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from app.config import Settings
    from app.imo.runner import InvitationRunner
    from app.imo.service import Idle, RoundProgress


async def run_round(
    settings: Settings, limit: int | None, console: Console, *, trigger: str = "cli"
) -> int:
    """Start a round and work on it here until it completes or pauses; exit code."""
    from redis.asyncio import Redis

    from app.channels import registry as channel_registry
    from app.db.session import create_engine_and_sessionmaker
    from app.gc_tuning import tune_gc
    from app.imo import service as imo_service
    from app.imo.runner import build_invitation_runner

    engine, sessionmaker = create_engine_and_sessionmaker(settings.database_url)
    redis = Redis.from_url(settings.redis_url)
    http = channel_registry.http_session(settings.imo_invitation_concurrency)
    try:
        async with sessionmaker() as session:
            try:
                round_ = await imo_service.start_round(
                    session, settings, trigger=trigger, now=datetime.now(UTC), limit=limit
                )
            except imo_service.RoundRunning as running:
                console.print(f"[red]{running.message}[/red]")
                return 1
            await session.commit()
        runner = build_invitation_runner(settings, sessionmaker, redis, http)
        assert runner is not None  # start_round refuses to start without Imo
        console.print(f"Invitation round [bold]{round_.id}[/bold] started.")
        tune_gc()  # a long round is a long-running process, as a worker is
        return await _work_with_progress(runner, round_.id, console)
    finally:
        await http.close()
        await redis.aclose()
        await engine.dispose()


async def _work_with_progress(runner: InvitationRunner, round_id: int, console: Console) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    started = time.monotonic()
    progress = Progress(
        TextColumn("[bold]Inviting"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("invitations", total=None)
        work = asyncio.create_task(_work_until_settled(runner, round_id, stop))
        while not work.done():
            await _show(runner, round_id, progress, task)
            await asyncio.wait([work], timeout=0.5)
        final = await _show(runner, round_id, progress, task)
    idle = work.result()
    console.print(summary_table(final, time.monotonic() - started))
    if stop.is_set():
        console.print("Interrupted: what was answered is recorded; the workers go on with it.")
        return 130
    if idle.reason == "switch":
        console.print(
            "A paused switch (all, or channel=imo) stops invitations: the workers go on "
            "once it is resumed (GET /v1/switches lists them)."
        )
    if idle.reason == "paused" and idle.paused_until is not None:
        console.print(
            "The messaging window is closed for the patients left: the round is paused "
            f"until {idle.paused_until.isoformat(timespec='minutes')}; the workers go on then."
        )
    return 0


async def _work_until_settled(runner: InvitationRunner, round_id: int, stop: asyncio.Event) -> Idle:
    """Work until the round completes or pauses; while others hold its last batches, wait."""
    while True:
        idle = await runner.work(round_id, stop)
        if stop.is_set() or idle.reason != "busy":
            return idle
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), runner.settings.imo_invitation_poll_seconds)


async def _show(
    runner: InvitationRunner, round_id: int, progress: Progress, task: TaskID
) -> RoundProgress:
    from app.imo import service as imo_service

    async with runner.sessionmaker() as session:
        current = await imo_service.round_progress(session, round_id, datetime.now(UTC))
    assert current is not None
    progress.update(task, total=current.candidates, completed=current.reached)
    return current


class RateColumn(ProgressColumn):
    """Invitations per second, as rich measures the bar's progress."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.0f}/s", style="cyan")


def summary_table(final: RoundProgress, elapsed: float) -> Table:
    table = Table(title=f"Invitation round {final.id}: {final.state}")
    table.add_column("result")
    table.add_column("patients", justify="right")
    for name, count in final.counts.items():
        table.add_row(name, f"{count:,}")
    table.add_section()
    table.add_row("reached", f"{final.reached:,}")
    table.add_row("candidates", f"{final.candidates or 0:,}")
    table.add_row("seconds", f"{elapsed:,.1f}")
    table.add_row("per second", f"{final.reached / elapsed:,.0f}" if elapsed else "-")
    return table
