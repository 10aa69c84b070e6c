from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Integer, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin

BROADCAST_STATES = ("fanning_out", "fanned_out", "cancelled")


class Broadcast(TimestampMixin, Base):
    """One message to every member of a group. The worker fans it out in chunks in
    patient id order, then (a static group) staff id order; `cursor` and `staff_cursor`
    are the last ids done, committed with their chunk, so a killed worker resumes
    after them."""

    __tablename__ = "broadcasts"
    __table_args__ = (
        CheckConstraint(f"state IN {BROADCAST_STATES}", name="state"),
        UniqueConstraint("idempotency_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    group_name: Mapped[str] = mapped_column(String(100))
    # The group's filter as it was when the broadcast started; null for a static list.
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    template: Mapped[str] = mapped_column(String(100))
    # {variable: value}; a value "@name" or "@<attribute>" is filled per recipient.
    parameters: Mapped[dict[str, str]] = mapped_column(JSONB)
    purpose: Mapped[str] = mapped_column(String(50))
    send_at: Mapped[datetime]
    channel_chain: Mapped[list[str] | None] = mapped_column(ARRAY(String(20)))
    state: Mapped[str] = mapped_column(String(20))
    cursor: Mapped[str | None] = mapped_column(String(64))
    # A static group's staff members come after its patients: the last staff id done,
    # committed with its chunk; null while the patients are not done.
    staff_cursor: Mapped[str | None] = mapped_column(String(64))
    members: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
