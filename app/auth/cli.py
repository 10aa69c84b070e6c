"""`notify api-keys list` and `notify api-keys revoke NAME|PREFIX`: an operator's view of
the clinic systems' keys, without SQL. The rules live in `app/auth/service.py`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from app.models import ApiKey

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def list_keys() -> None:
    """Every API key: name, prefix, created, last used (to the minute), revoked."""
    from app.devtools.environment import prepare_environment

    database_url, _ = prepare_environment(redis=False)
    keys = asyncio.run(_list(database_url))
    console.print(keys_table(keys))


def revoke_key(
    name_or_prefix: Annotated[
        str, typer.Argument(help="The key's prefix (as listed), or its name if only one has it.")
    ],
) -> None:
    """Revoke a key: its next request is refused (401)."""
    from app.devtools.environment import prepare_environment
    from app.errors import AppError

    database_url, _ = prepare_environment(redis=False)
    try:
        revoked = asyncio.run(_revoke(database_url, name_or_prefix))
    except AppError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    console.print(f"Revoked API key [bold]{revoked.name}[/bold] ({revoked.prefix}...)")


async def _list(database_url: str) -> list[ApiKey]:
    from app.auth import service as auth_service
    from app.db.session import create_engine_and_sessionmaker

    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    try:
        async with sessionmaker() as session:
            return await auth_service.list_api_keys(session)
    finally:
        await engine.dispose()


async def _revoke(database_url: str, name_or_prefix: str) -> ApiKey:
    from app.auth import service as auth_service
    from app.db.session import create_engine_and_sessionmaker

    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    try:
        async with sessionmaker() as session:
            revoked = await auth_service.revoke_by_name_or_prefix(session, name_or_prefix)
            await session.commit()
            return revoked
    finally:
        await engine.dispose()


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def keys_table(keys: list[ApiKey]) -> Table:
    table = Table(title=f"{len(keys)} API keys (times in UTC)", title_justify="left")
    table.add_column("name", overflow="fold")
    for column in ("prefix", "created", "last used", "revoked"):
        table.add_column(column, no_wrap=True)
    for key in keys:
        table.add_row(
            key.name,
            key.prefix,
            _when(key.created_at),
            _when(key.last_used_at),
            _when(key.revoked_at),
        )
    return table
