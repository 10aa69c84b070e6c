"""API keys shown in a terminal (`notify api-keys list`); the rules live in
`app/auth/service.py`."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.table import Table

from app.auth import service as auth_service
from app.db.session import standalone_session
from app.models import ApiKey


async def every_key(database_url: str) -> list[ApiKey]:
    async with standalone_session(database_url) as session:
        return await auth_service.list_api_keys(session)


async def revoke(database_url: str, name_or_prefix: str) -> ApiKey:
    """Revoke and commit; raises what `auth_service.revoke_by_name_or_prefix` raises."""
    async with standalone_session(database_url) as session:
        revoked = await auth_service.revoke_by_name_or_prefix(session, name_or_prefix)
        await session.commit()
        return revoked


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
