from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


class Group(TimestampMixin, Base):
    """Who a broadcast goes to: a static member list of patients and staff (`filter`
    null) or a filter over patient attributes, evaluated when a broadcast starts."""

    __tablename__ = "groups"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class GroupMember(Base):
    __tablename__ = "group_members"
    __table_args__ = (Index("ix_group_members_patient", "patient_id"),)

    group_name: Mapped[str] = mapped_column(
        ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True
    )
    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True
    )


class GroupStaffMember(Base):
    """A staff member of a static group: broadcasts reach them (by email) after the
    group's patients."""

    __tablename__ = "group_staff_members"
    __table_args__ = (Index("ix_group_staff_members_staff", "staff_id"),)

    group_name: Mapped[str] = mapped_column(
        ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True
    )
    staff_id: Mapped[str] = mapped_column(
        ForeignKey("staff.id", ondelete="CASCADE"), primary_key=True
    )
