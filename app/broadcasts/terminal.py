"""`notify broadcast`: start a broadcast and fan it out here with a progress bar, or (dry
run) show how many it would reach and three of its texts."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.broadcasts import service as broadcast_service
from app.broadcasts.schemas import BroadcastIn
from app.config import Settings
from app.errors import AppError


async def run(settings: Settings, request: BroadcastIn, console: Console, *, dry_run: bool) -> int:
    """Exit code: 0 done, 1 refused (the message says why)."""
    from app.db.session import create_engine_and_sessionmaker
    from app.groups import service as group_service

    engine, sessionmaker = create_engine_and_sessionmaker(settings.database_url)
    try:
        async with sessionmaker() as session:
            try:
                if dry_run:
                    preview = await broadcast_service.dry_run(session, request)
                    console.print(f"Group [bold]{request.group}[/bold]: {preview.members} members")
                    for patient, rendered in preview.samples:
                        console.print(f"- {patient.id} ({rendered.locale}): {rendered.body}")
                    return 0
                group = await group_service.get_group(session, request.group)
                members = await group_service.count(session, group)
                broadcast, _ = await broadcast_service.start(session, request)
            except AppError as refused:
                console.print(f"[red]error:[/red] {refused.message}")
                for detail in refused.details:
                    console.print(f"  {detail['field']}: {detail['message']}")
                return 1
            await session.commit()
        console.print(f"Broadcast [bold]{broadcast.id}[/bold] started.")
        progress = Progress(
            TextColumn("[bold]Scheduling"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            task = progress.add_task("members", total=members)

            async def advance(done: int) -> None:
                progress.update(task, completed=done)

            result = await broadcast_service.fan_out(
                sessionmaker, broadcast.id, settings, on_chunk=advance
            )
        console.print(
            f"{result.members} notifications scheduled ({result.state}); the workers send them."
        )
        return 0
    finally:
        await engine.dispose()
