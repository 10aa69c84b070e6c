"""SQL for API keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiKey


@dataclass(frozen=True, slots=True)
class PresentedKey:
    """What checking a presented key reads of its row."""

    id: int
    name: str
    key_hash: str
    revoked_at: datetime | None
    last_used_at: datetime | None


# Every /v1 request runs it: columns, not an ORM entity.
_BY_HASH = text(
    "SELECT id, name, key_hash, revoked_at, last_used_at FROM api_keys WHERE key_hash = :hash"
)


async def by_hash(session: AsyncSession, key_hash: str) -> PresentedKey | None:
    row = (await session.execute(_BY_HASH, {"hash": key_hash})).one_or_none()
    return None if row is None else PresentedKey(*row)


async def every_key(session: AsyncSession) -> list[ApiKey]:
    return list(await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


async def live_by_prefix_or_name(session: AsyncSession, prefix_or_name: str) -> list[ApiKey]:
    """The live keys with this prefix; if none, the live keys with this name."""
    live = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    matches = list(await session.scalars(live.where(ApiKey.prefix == prefix_or_name)))
    if matches:
        return matches
    return list(await session.scalars(live.where(ApiKey.name == prefix_or_name)))


async def touch(session: AsyncSession, api_key_id: int, resolution_seconds: int) -> None:
    """`last_used_at = now()` unless written less than `resolution_seconds` ago. SKIP
    LOCKED: a request never waits for another one writing the same key's time."""
    stale = (
        select(ApiKey.id)
        .where(
            ApiKey.id == api_key_id,
            or_(
                ApiKey.last_used_at.is_(None),
                ApiKey.last_used_at
                < func.now() - text(f"interval '{int(resolution_seconds)} seconds'"),
            ),
        )
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id == stale)
        .values(last_used_at=func.now())
        .execution_options(synchronize_session=False)
    )
