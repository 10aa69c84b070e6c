from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin

BROADCAST_STATES = ("fanning_out", "fanned_out", "cancelled")


class Broadcast(TimestampMixin, Base):
    """One message to every member of a group. The worker fans it out in lanes
    (`BroadcastLane`: disjoint ranges of patient ids, run at once), each in chunks in
    patient id order; a static group's staff members in one more lane (`staff`), in
    staff id order, once every patient lane is done."""

    __tablename__ = "broadcasts"
    __table_args__ = (
        CheckConstraint(f"state IN {BROADCAST_STATES}", name="state"),
        # Idempotency keys are each API key's own (migration 20261206_broadcast_key_scoping).
        UniqueConstraint("api_key_id", "idempotency_key"),
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
    # The API key that started it (null: `notify broadcast`, or started before the keys
    # were scoped).
    api_key_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))


class BroadcastLane(Base):
    """One range of a broadcast's members, fanned out on its own: the patient ids after
    `lower_id` up to `upper_id` (included; none: no end). The ranges are computed once,
    when the fan-out first runs, and kept: a resumed fan-out goes on in the same ranges.
    `cursor` is the last patient id done, committed with its chunk (with `members`, the
    members reached so far), so a killed worker resumes each lane after its own.
    A staff lane (`staff`, a static group's only, numbered after the patient lanes)
    holds staff ids instead: it runs once every patient lane is done."""

    __tablename__ = "broadcast_lanes"

    broadcast_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("broadcasts.id", ondelete="CASCADE"), primary_key=True
    )
    lane: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    lower_id: Mapped[str] = mapped_column(String(64))
    upper_id: Mapped[str | None] = mapped_column(String(64))
    cursor: Mapped[str] = mapped_column(String(64))
    members: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    done: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    staff: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
