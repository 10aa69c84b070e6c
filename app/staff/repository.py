"""SQL for staff users."""

from __future__ import annotations

from sqlalchemy import Boolean, func, literal_column
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import StaffMember


async def upsert(
    session: AsyncSession, staff_id: str, *, name: str, email: str, locale: str
) -> bool:
    """Insert or replace one staff user; True if it was created."""
    given = insert(StaffMember).values(id=staff_id, name=name, email=email, locale=locale)
    statement = given.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "name": given.excluded.name,
            "email": given.excluded.email,
            "locale": given.excluded.locale,
            "updated_at": func.now(),
        },
    ).returning(literal_column("(xmax = 0)", Boolean))
    created = await session.scalar(statement)
    return bool(created)


async def get(session: AsyncSession, staff_id: str, *, fresh: bool = False) -> StaffMember | None:
    return await session.get(StaffMember, staff_id, populate_existing=fresh)
