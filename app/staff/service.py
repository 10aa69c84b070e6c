"""Staff rules: storing a staff user, reading one back."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import StaffMember
from app.staff import repository as staff_repository
from app.staff.schemas import StaffIn


@dataclass(frozen=True, slots=True)
class StoredStaff:
    staff: StaffMember
    created: bool


async def put_staff(session: AsyncSession, staff_id: str, data: StaffIn) -> StoredStaff:
    """Create or replace one staff user. Idempotent. Flushes."""
    created = await staff_repository.upsert(
        session, staff_id, name=data.name, email=data.email, locale=data.locale
    )
    staff = await staff_repository.get(session, staff_id, fresh=True)
    assert staff is not None
    return StoredStaff(staff, created)


async def get_staff(session: AsyncSession, staff_id: str) -> StaffMember:
    """The staff user; raises NotFound."""
    staff = await staff_repository.get(session, staff_id)
    if staff is None:
        raise NotFound(f"no staff user '{staff_id}'")
    return staff
